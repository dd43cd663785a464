"""Runs timm's own tests/test_models.py, of the installed timm version, over the zoo's entries.

The test file comes from timm's source distribution, fetched with pip into a temporary folder (never
committed); video_models_plugin.py restricts it to our entries. Extra arguments go to pytest.

    python tests/timm_models/run.py [-x] [-k forward]
"""
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def fetch_timm_tests(version: str, dest: str) -> str:
    """timm's tests/ folder of ``version``, from its sdist, extracted under ``dest``; returns its path."""
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--no-binary', ':all:',
                    f'timm=={version}', '-d', dest], check=True)
    sdist = next(os.path.join(dest, f) for f in os.listdir(dest) if f.endswith('.tar.gz'))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split('/')[1:2] == ['tests']]
        tar.extractall(dest, members=members, filter='data')
    return os.path.join(dest, f'timm-{version}', 'tests')


def main(argv) -> int:
    version = importlib.metadata.version('timm')
    with tempfile.TemporaryDirectory(prefix='timm-tests-') as tmp:
        tests = fetch_timm_tests(version, tmp)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, HERE, os.environ.get('PYTHONPATH')])))
        print(f'timm {version}: running {tests}/test_models.py over the zoo entries', flush=True)
        return subprocess.run([sys.executable, '-m', 'pytest', '-p', 'video_models_plugin', '-p', 'no:cacheprovider',
                               '-q', '-rs', '-W', 'ignore::pytest.PytestUnknownMarkWarning',
                               os.path.join(tests, 'test_models.py'), *argv], cwd=tmp, env=env).returncode


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
