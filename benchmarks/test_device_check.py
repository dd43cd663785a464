"""benchmarks/device_check.py, the GPU machine's one command, runs end to end on the CPU at CI size (--quick), so
that it cannot rot between the rare runs on a GPU: every job it measures still runs through the command line it
calls, every measurement is a positive finite rate, the table names each job, and its tests table still names
files that exist. No speed is asserted."""
import glob
import json
import math
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:   # benchmarks/ sits beside the installed packages, not among them
    sys.path.insert(0, REPO_ROOT)

from benchmarks import device_check  # noqa: E402

RATE_KEY = {'clips/s': 'clips_per_s', 'snippets/s': 'snippets_per_s'}


def test_quick_cpu_run_measures_every_job_and_writes_json_and_table(tmp_path):
    out = tmp_path / 'report'
    proc = subprocess.run([sys.executable, 'benchmarks/device_check.py', '--device', 'cpu', '--quick', '--no-tests',
                           '--out', str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    [json_path] = glob.glob(str(out / 'device-cpu-*.json'))
    [txt_path] = glob.glob(str(out / 'device-cpu-*.txt'))
    assert os.path.splitext(json_path)[0] == os.path.splitext(txt_path)[0]
    assert not [p for p in os.listdir(out) if p.endswith('.tmp')]          # the atomic writes left no temp file
    with open(json_path) as f:
        report = json.load(f)

    assert report['ok'] is True and report['failed'] == [] and report['quick'] is True
    assert report['tests'] is None and 'tests' not in report['steps']
    assert set(report['measurements']) == {key for _, key in device_check.MEASUREMENTS}
    for key, m in report['measurements'].items():
        assert m['status'] == 'ok', (key, m)
        rate = m[RATE_KEY[m['unit']]]
        assert rate == m['rate'] and math.isfinite(rate) and rate > 0, (key, m)
        assert math.isfinite(m['gflops_per_s']) and m['gflops_per_s'] > 0
        assert math.isfinite(m['fraction_of_peak']) and m['fraction_of_peak'] > 0
        assert m['precision'] == m['peak_precision'] and m['precision'] in key
    assert {m['unit'] for k, m in report['measurements'].items() if k.startswith('features')} == {'snippets/s'}
    assert report['measurements']['features_10crop_fp32']['crops'] == 10
    for precision in ('fp32', 'bf16'):
        assert report['peak'][precision]['gflops_per_s'] > 0

    # the bench_jobs step: benchmarks/bench_jobs.py in its quick form, its own report beside this one
    assert report['steps']['bench_jobs']['status'] == 'ok'
    jobs = report['bench_jobs']
    assert os.path.isfile(jobs['json']) and os.path.dirname(jobs['json']) == str(out) and jobs['errors'] == {}
    assert jobs['rows']['scoring_fp32']['peak_pss_mb'] > 0

    env = report['environment']
    assert env['torch'] and env['device'] == 'cpu' and env['device_name'] is None
    assert set(env['tf32']) >= {'cuda.matmul.allow_tf32', 'cudnn.allow_tf32'} and 'cudnn.benchmark' in env

    with open(txt_path) as f:
        table = f.read()
    for job, key in device_check.MEASUREMENTS:
        assert job in table and key in table
    assert 'TF32' in table and 'cudnn.benchmark' in table and 'peak fp32' in table and 'peak bf16' in table


def test_every_row_of_the_tests_table_names_an_existing_file_and_selects_tests():
    """Each -k expression of device_check.TESTS (full and --quick) still selects at least one test: pytest exits
    5 when nothing is collected. Collection only, all rows in one child process."""
    selections = []
    for path, full_k, quick_k, why in device_check.TESTS:
        assert os.path.isfile(os.path.join(REPO_ROOT, path)), f'{path} of device_check.TESTS is gone'
        assert why
        selections += [[path] + (['-k', k] if k else []) for k in (full_k, quick_k) if k is not False]
    code = ('import json, sys, pytest\n'
            'args = ["--collect-only", "-q", "-p", "no:cacheprovider"]\n'
            'print(json.dumps([int(pytest.main(args + s)) for s in json.loads(sys.argv[1])]))\n')
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(selections)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert dict(zip(map(' '.join, selections), codes)) == {' '.join(s): 0 for s in selections}


def test_the_full_run_measures_at_the_sizes_of_the_jobs():
    assert device_check.FULL['score'] == (32, 224) and device_check.FULL['train'] == (32, 224)
    assert device_check.FULL['snippet'] == 16 and device_check.FULL['snippet_crop'] == 224
