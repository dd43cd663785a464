"""Evaluation under torchrun: 2 CPU ranks (gloo) against 1 process, each video scored once, a dead rank ends the job."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from eval.kit.distributed import shard
from eval.kit.store import SCORED, ScoreStore
from eval_test_models import REPO_ROOT, cli_args, cli_env, python_command, torchrun_command, write_synthetic_set

NUM_VIDEOS = 5      # not a multiple of the 2 ranks on purpose


def run(cmd, env, timeout=180):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def one_and_two_ranks(tmp_path_factory):
    """The same 5 videos scored by one process and by two torchrun ranks (the latter with the FLOP table)."""
    tmp = tmp_path_factory.mktemp('dist')
    data = write_synthetic_set(str(tmp / 'data'), NUM_VIDEOS)
    single = run(python_command(cli_args('tiny_video_net', data, str(tmp / 'one'), '--no-flops')), cli_env())
    double = run(torchrun_command(2, cli_args('tiny_video_net', data, str(tmp / 'two'))), cli_env())
    return tmp / 'one', tmp / 'two', single, double


def load_run(out):
    with np.load(out / 'scores.npz') as scores:
        arrays = {k: scores[k] for k in scores.files}
    return arrays, json.load(open(out / 'summary.json'))


def test_shard_gives_every_item_to_exactly_one_rank_without_padding():
    items = list(range(7))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, [])) == items
    assert [len(s) for s in shares] == [3, 2, 2]
    assert shard(items[:1], 1, 2) == []


def test_two_ranks_score_every_video_exactly_once(one_and_two_ranks):
    _, two, _, _ = one_and_two_ranks
    _, summary = load_run(two)
    keys = [v.key for _, videos, _ in ScoreStore(str(two)).iter_files() for v in videos if v.status == SCORED]
    assert sorted(keys) == [f'clip{i}' for i in range(NUM_VIDEOS)]          # each once, none missing
    ranks = summary['run']['ranks']
    assert summary['run']['world_size'] == 2
    assert [r['assigned'] for r in ranks] == [3, 2] and [r['scored'] for r in ranks] == [3, 2]
    assert summary['counts']['scored'] == NUM_VIDEOS and summary['counts']['failed'] == 0


def test_two_ranks_give_the_scores_and_metrics_of_one_process(one_and_two_ranks):
    one, two, _, _ = one_and_two_ranks
    (a, summary_a), (b, summary_b) = load_run(one), load_run(two)
    assert list(a['video_ids']) == list(b['video_ids']) and a['scored'].all() and b['scored'].all()
    # a rank runs on half the cores, and oneDNN may then sum a convolution in another order: float32
    # rounding, not a different result
    np.testing.assert_allclose(b['probs'], a['probs'], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b['outputs'], a['outputs'], rtol=1e-5, atol=1e-6)
    assert summary_b['metrics'] == summary_a['metrics']
    assert summary_b['metrics_over_annotated'] == summary_a['metrics_over_annotated']


def test_only_rank_zero_prints_the_header_and_flop_table(one_and_two_ranks):
    _, _, _, double = one_and_two_ranks
    assert double.stdout.count('GFLOPs per view') == 1
    assert double.stdout.count('model    tiny_video_net') == 1
    assert double.stdout.count('scored   5 of 5 videos') == 1


def test_a_killed_rank_stops_the_job_with_an_error_naming_it(tmp_path):
    data = write_synthetic_set(str(tmp_path / 'data'), 8)
    out = tmp_path / 'out'
    cmd = torchrun_command(2, cli_args('slow_tiny_video_net', data, str(out), '--no-flops'))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=cli_env(seconds_per_batch=1.0), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline and proc.poll() is None:
            for path, videos, _ in ScoreStore(str(out)).iter_files():
                if os.path.basename(path).startswith('rank0001') and videos:
                    victim = int(os.path.basename(path).split('-')[-1].split('.')[0])   # rank0001-<host>-<pid>
            time.sleep(0.05)
        assert victim is not None, 'rank 1 never stored a video'
        os.kill(victim, signal.SIGKILL)
        # a hang guard, not a speed test: the job must end (it would otherwise wait for rank 1 forever)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    # torchrun stops rank 0 itself and reports rank 1's signal; its report's layout is torchrun's, so only the
    # facts are matched: signal 9 (by name or number) and rank 1
    assert re.search(r'SIGKILL|signal 9\b|exitcode\s*:\s*-9\b', output, re.IGNORECASE), output[-3000:]
    assert re.search(r'rank\W{0,4}1\b', output, re.IGNORECASE), output[-3000:]
    assert not (out / 'summary.json').exists()


def test_a_hanging_rank_stops_the_job_after_dist_timeout_with_exit_status_3(tmp_path):
    """Through the engine: rank 1 hangs in its first forward pass for 200 s; rank 0 scores its videos, waits at
    most --dist-timeout 3 for rank 1 at the next collective, names the step and the timeout, and exits 3. A job
    that ends within 150 s was stopped by that timeout (the default, 1800 s, would outlast subprocess.run's
    timeout, which then fails the test)."""
    data = write_synthetic_set(str(tmp_path / 'data'), 4)
    out = tmp_path / 'out'
    env = dict(cli_env(), EVAL_TEST_HANG_SECONDS='200')
    proc = subprocess.run(torchrun_command(2, cli_args('hanging_tiny_video_net', data, str(out), '--no-flops',
                                                       '--dist-timeout', '3')),
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r'rank 0: .* failed after waiting up to 3s', output), output[-3000:]
    assert 'rank 0 exit status 3' in proc.stderr, output[-3000:]     # said by tests/eval_test_models.py
    assert not (out / 'summary.json').exists()
