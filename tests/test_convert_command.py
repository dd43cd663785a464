"""The Caffe2 converter's command: `python -m zoo.convert_caffe2` converts; `python -m converters.caffe2`, its old
name, fails loudly naming the new command with the user's own arguments (it used to exit 0 having done nothing)."""
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import zoo
from caffe2_checkpoints import write_caffe2_checkpoint
from converters.caffe2_mapping import zoo_key

REPO = Path(__file__).resolve().parents[1]
NOTE = ("error: the converter's command line is python -m zoo.convert_caffe2 "
        "(converters never import the model registry)")


def _run(module, *args):
    return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _run_old_in_process(capsys, *args):
    """``python -m converters.caffe2 ARGS`` in this process (runpy runs the module as -m does, without the
    start-up of a new interpreter): (exit status, stdout, stderr)."""
    argv, sys.argv = sys.argv, ['converters/caffe2.py', *args]
    try:
        with warnings.catch_warnings():     # runpy notes that the module is also imported (by earlier tests)
            warnings.simplefilter('ignore', RuntimeWarning)
            runpy.run_module('converters.caffe2', run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_old_command_exits_2_naming_the_new_one_with_the_same_arguments():
    assert not (REPO / 'out.pth').exists()
    result = _run('converters.caffe2', 'in.pkl', 'out.pth', '--model', 'i3d_r50')
    assert result.returncode == 2
    assert result.stderr == f'{NOTE}; run:\n  python -m zoo.convert_caffe2 in.pkl out.pth --model i3d_r50\n'
    assert result.stdout == ''
    assert not (REPO / 'out.pth').exists()


@pytest.mark.parametrize('args', [[], ['--download', 'i3d_r50'], ['--sha256', 'my file.pkl']])
def test_old_command_fails_whatever_the_arguments(args, capsys):
    code, _, err = _run_old_in_process(capsys, *args)
    assert code == 2
    assert err.startswith(NOTE)
    assert err.splitlines()[-1] == '  ' + shlex.join(['python', '-m', 'zoo.convert_caffe2', *args])


def test_old_command_help_names_the_new_command(capsys):
    code, out, _ = _run_old_in_process(capsys, '--help')
    assert code == 0
    assert 'python -m zoo.convert_caffe2' in out.splitlines()[0]
    assert 'usage: python -m zoo.convert_caffe2' in out


def test_the_suggested_command_converts_a_caffe2_checkpoint(tmp_path, capsys):
    source, out = tmp_path / 'i3d baseline.pkl', tmp_path / 'i3d_r50.pth'
    weights = write_caffe2_checkpoint(source, 'i3d_r50', seed=5)
    code, _, err = _run_old_in_process(capsys, str(source), str(out), '--model', 'i3d_r50', '--quiet')
    assert code == 2 and not out.exists()
    suggested = shlex.split(err.splitlines()[-1])
    assert suggested[:3] == ['python', '-m', 'zoo.convert_caffe2']
    result = _run(*suggested[2:])  # as the user would type it, under this interpreter
    assert result.returncode == 0, result.stderr
    assert f'wrote {out}' in result.stdout and 'model: i3d_r50' in result.stdout
    state_dict = torch.load(out, weights_only=True)
    with torch.device('meta'):
        assert sorted(state_dict) == sorted(zoo.create_model('i3d_r50').state_dict())
    for blob, array in weights.items():
        assert torch.equal(state_dict[zoo_key(blob)], torch.from_numpy(array)), blob
