"""benchmarks/bench_jobs.py, the jobs' end-to-end benchmark, runs at CI size (--quick) so that it cannot rot
between full runs; CI runs this file after make test (about a minute: nine job start-ups), as it does
test_device_check.py. No speed is asserted."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jobs_benchmark_quick_run_reports_every_figure(tmp_path):
    """bench_jobs.py --quick end to end on tiny sizes (fp32, no compiling): the rows carry their figures and
    every run's tree memory is positive. No speed is asserted."""
    import json
    import math
    import subprocess
    command = [sys.executable, 'benchmarks/bench_jobs.py', '--quick', '--only', 'scoring,features,memory,network',
               '--precisions', 'fp32', '--compile-in', 'none', '--memory-frames', '100', '--memory-workers', '0,1',
               '--tag', 'test', '--out-dir', str(tmp_path)]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / 'jobs-test.json') as f:
        report = json.load(f)
    assert (tmp_path / 'jobs-test.txt').read_text().count('\n') > 5
    assert report['errors'] == {} and set(report['parts']) == {'scoring', 'features', 'memory', 'network'}
    assert report['peak']['fp32']['gflops_per_s'] > 0 and report['peak']['bf16']['gflops_per_s'] > 0
    # the peak is probed at the start, before each of the 4 parts and at the end; the report's is the best probe
    probes = report['peak_probes']
    assert [p['when'] for p in probes] == ['at the start', 'before scoring', 'before features', 'before memory',
                                           'before network', 'at the end']
    for precision in ('fp32', 'bf16'):
        assert report['peak'][precision]['gflops_per_s'] == max(p[precision] for p in probes)
    assert report['machine']['torch'] and report['load_before'] and report['load_after']
    scoring = report['parts']['scoring']['fp32']
    assert scoring['gflop_per_video'] == 2 * scoring['job_flops']['flops_per_video'] / 1e9 > 0
    assert math.isfinite(scoring['seconds_per_video']) and math.isfinite(scoring['startup_s'])
    assert report['parts']['scoring']['compile_start']['seconds'] is None       # nothing compiled
    features = report['parts']['features']['fp32']
    # at --quick sizes the two-run difference is start-up noise (it can come out negative): finite, not positive
    assert math.isfinite(features['seconds_per_snippet'])
    if features['seconds_per_snippet'] > 0:
        assert math.isfinite(features['fraction_of_peak'])
    else:       # a negative difference: no rate, and the row says why
        assert math.isnan(features['fraction_of_peak']) and 't(N2) <= t(N1)' in features['warning']
    for row in (scoring, features):     # rescored against the best probe, the live fraction kept
        assert row['peak_gflops_per_s'] == report['peak']['fp32']['gflops_per_s'] >= row['adjacent_peak_gflops_per_s']
        # at --quick sizes a negative two-run difference gives NaN GFLOP/s: then both fractions are NaN too
        rate = row['gflops_per_s'] if math.isfinite(row['gflops_per_s']) else float('nan')
        assert row['fraction_of_peak'] * row['peak_gflops_per_s'] == pytest.approx(rate, rel=1e-9, nan_ok=True)
        assert row['fraction_of_adjacent_peak'] * row['adjacent_peak_gflops_per_s'] == \
            pytest.approx(rate, rel=1e-9, nan_ok=True)
    assert features['crops'] == 10 and features['snippets_per_video'] > 0
    assert features['job_says_compile'] and not any(features['job_says_compile'].values())
    network = report['parts']['network']
    # the network's FLOPs (torch's counter on the meta device: convolutions and the classifier) are the scoring
    # job's fvcore count x 2 for the same clip, less the BatchNorm fvcore also counts (0.4% here; the fast path folds
    # it into the convolutions), and the stem's share is the textbook count of i3d_r50's conv1 (3->64, 5x7x7,
    # stride 2x2x2, padding 2,3,3) on the 2 clips of 8x56 over that
    assert network['clip'] == '8x56' and network['batch'] == 2 and not network['compiled']
    assert network['gflop_per_pass'] * 1e9 == pytest.approx(2 * 2 * scoring['job_flops']['flops_per_video'], rel=1e-2)
    stem_flop = 2 * (2 * 64 * 4 * 28 * 28) * 3 * 5 * 7 * 7
    assert network['fp32']['stem_flop_share'] == pytest.approx(stem_flop / (network['gflop_per_pass'] * 1e9), rel=1e-9)
    assert 0 < network['fp32']['stem_fraction_of_peak'] and 0 < network['fp32']['fraction_of_peak']
    # fine-tuning's step alone (the finetune row's bound): its rate is 3 forwards of the batch over the step
    training = network['training']
    assert training['clip'] == '32x32' and training['batch'] == 2 and training['bn'] == 'frozen'
    step = training['fp32']
    assert 0 < step['forward_s'] < step['step_s']
    assert step['gflops_per_s'] == pytest.approx(training['gflop_per_step'] / step['step_s'], rel=1e-9)
    assert step['fraction_of_peak'] > 0 and 'job_over_alone' not in step       # no finetune part in this run
    # every run and every probe records the hypervisor's share of the CPU time (on Linux), a fraction
    assert all(r['steal'] is None or 0 <= r['steal'] <= 1 for r in report['runs'])
    assert all(p['steal'] is None or 0 <= p['steal'] <= 1 for p in probes[1:])
    assert scoring['repeats'] == [[{'seconds': scoring['seconds'][i], 'steal': scoring['steal'][i],
                                    'job_compile_start_s': None}] for i in (0, 1)]     # --quick: 1; eager
    # nothing compiled: the rate is the plain difference
    assert scoring['seconds_per_video'] == scoring['seconds_per_video_with_compile_noise']
    memory = report['parts']['memory']
    assert [(r['frames'], r['workers']) for r in memory['runs']] == [(100, 0), (100, 1)]
    assert set(memory['worker_cost_mb']) == {'100'}
    for workers in ('0', '1'):
        row = memory['by_workers'][workers]
        assert row['max_over_min'] == row['max_over_min_beyond_shortest'] == 1.0      # one length: nothing to compare
        assert row['late_growth_longest'] is None or row['late_growth_longest'] > 0
    assert all(r['peak_pss_mb'] > 0 and r['pss_samples'] > 0 for r in report['runs'])
    assert len(report['runs']) == 6


def test_the_difference_of_two_runs_leaves_out_the_compile_start_each_job_measured():
    """Two compiled runs of 2 and 6 items whose compiles took 14 s and 17 s: the plain difference counts the 3 s as
    0.75 s an item; taken out of each run first, the rate is the work's, and the start-up keeps the compile."""
    from benchmarks.bench_jobs import two_run_rate, work_seconds
    r1 = {'seconds': 14.0 + 10.0 + 2 * 7.0, 'job_says_compile': {'summary.json:start_s': 14.0}}
    r2 = {'seconds': 17.0 + 10.0 + 6 * 7.0, 'job_says_compile': {'summary.json:start_s': 17.0}}
    assert two_run_rate(r1['seconds'], r2['seconds'], 2, 6)['seconds_per_item'] == pytest.approx(7.75)
    assert two_run_rate(work_seconds(r1), work_seconds(r2), 2, 6)['seconds_per_item'] == pytest.approx(7.0)
    eager = {'seconds': 30.0, 'job_says_compile': {'summary.json:compiled': False}}
    assert work_seconds(eager) == 30.0
