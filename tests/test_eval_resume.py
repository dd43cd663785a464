"""Resuming a run from its durable store, refusing a foreign --out, retrying and recording failures, pre-flight checks."""
import json
import os
import subprocess

import numpy as np
import pytest

import eval.data.records
import eval.kit.engine
import eval.kinetics
import eval.kit.rundir
import eval.kit.shards
from eval.data.records import FailedVideo, MultiViewDataset, VideoRecord, VideoSample
from eval.data.decode import VideoDecodeError
from eval.kit.store import FAILED, SCORED, ScoreStore, StoredVideo, decode_records, encode_record
from eval.data.views import ViewSampler, ViewSpec
from eval_test_models import (REPO_ROOT, cli_args, cli_env, kill_mid_run, python_command, torchrun_command,
                              write_synthetic_set)

NUM_VIDEOS = 8


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_synthetic_set(str(tmp_path_factory.mktemp('resume') / 'data'), NUM_VIDEOS)


def run_cli(args, seconds_per_batch=0.0):
    proc = subprocess.run(python_command(args), cwd=REPO_ROOT, env=cli_env(seconds_per_batch), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load_run(out):
    with np.load(os.path.join(out, 'scores.npz')) as scores:
        arrays = {k: scores[k] for k in scores.files}
    return arrays, json.load(open(os.path.join(out, 'summary.json')))


def stored_keys(out, status=SCORED):
    """Every stored record's key, repeats included (a video scored twice would appear twice)."""
    return [v.key for _, videos, _ in ScoreStore(str(out)).iter_files() for v in videos if v.status == status]


def in_process(args, capsys):
    """eval.kinetics.main in this process (the tiny models are registered by importing eval_test_models)."""
    try:
        code = eval.kinetics.main(args)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------- kill -9 and resume

@pytest.fixture(scope='module')
def uninterrupted(dataset, tmp_path_factory):
    """The run the killed runs must end as: one process, no delay (slow_tiny_video_net's weights: seed 0)."""
    reference = str(tmp_path_factory.mktemp('uninterrupted') / 'out')
    run_cli(cli_args('slow_tiny_video_net', dataset, reference, '--no-flops'))
    return reference


def test_run_killed_mid_way_resumes_to_the_uninterrupted_result_without_rescoring(dataset, uninterrupted, tmp_path):
    reference = uninterrupted

    def launch(delay, attempt):
        out = str(tmp_path / f'killed{attempt}')
        return subprocess.Popen(python_command(cli_args('slow_tiny_video_net', dataset, out, '--no-flops')),
                                cwd=REPO_ROOT, env=cli_env(seconds_per_batch=delay), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    # 2 s per video, then longer if this process was descheduled past the whole run (the reference and resumed
    # runs do not sleep)
    attempt, _ = kill_mid_run(launch, lambda attempt: len(stored_keys(str(tmp_path / f'killed{attempt}'))),
                              total=NUM_VIDEOS, delays=(2.0, 8.0))
    out = str(tmp_path / f'killed{attempt}')
    done_before = len(stored_keys(out))
    assert 1 <= done_before < NUM_VIDEOS, f'the kill came too late or too early: {done_before} stored'
    assert not os.path.exists(os.path.join(out, 'summary.json'))

    run_cli(cli_args('slow_tiny_video_net', dataset, out, '--no-flops'))
    (expected, expected_summary), (resumed, resumed_summary) = load_run(reference), load_run(out)
    # identical batches per video and the float64 view sums stored bit for bit: exactly equal, not close
    for name in ('video_ids', 'labels', 'scored', 'probs', 'outputs'):
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    assert resumed_summary['metrics'] == expected_summary['metrics']
    assert resumed_summary['run']['videos_from_earlier_runs'] == done_before
    assert resumed_summary['run']['scored_this_run'] == NUM_VIDEOS - done_before
    assert sorted(stored_keys(out)) == sorted(f'clip{i}' for i in range(NUM_VIDEOS))   # none scored twice


def test_a_run_killed_in_one_process_resumes_with_two_ranks(dataset, uninterrupted, tmp_path):
    """docs/scoring.md: the number of processes may change on resume. One process killed after its first stored
    video, resumed by 2 torchrun ranks: every video scored once, with the scores and metrics of an uninterrupted
    run (to float32 rounding: a rank runs on half the cores, as in test_eval_distributed)."""
    reference = uninterrupted

    def launch(delay, attempt):
        return subprocess.Popen(python_command(cli_args('slow_tiny_video_net', dataset, str(tmp_path / f'k{attempt}'),
                                                        '--no-flops')),
                                cwd=REPO_ROOT, env=cli_env(seconds_per_batch=delay), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    attempt, done_before = kill_mid_run(launch, lambda attempt: len(stored_keys(str(tmp_path / f'k{attempt}'))),
                                        total=NUM_VIDEOS, delays=(2.0, 8.0))
    out = str(tmp_path / f'k{attempt}')
    proc = subprocess.run(torchrun_command(2, cli_args('slow_tiny_video_net', dataset, out, '--no-flops')),
                          cwd=REPO_ROOT, env=cli_env(seconds_per_batch=0.0), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (expected, expected_summary), (resumed, summary) = load_run(reference), load_run(out)
    assert list(resumed['video_ids']) == list(expected['video_ids']) and resumed['scored'].all()
    np.testing.assert_allclose(resumed['probs'], expected['probs'], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed['outputs'], expected['outputs'], rtol=1e-5, atol=1e-6)
    assert summary['metrics'] == expected_summary['metrics']
    assert summary['run']['world_size'] == 2 and summary['run']['videos_from_earlier_runs'] == done_before
    assert summary['run']['scored_this_run'] == NUM_VIDEOS - done_before
    assert sorted(stored_keys(out)) == sorted(f'clip{i}' for i in range(NUM_VIDEOS))     # none scored twice


def test_torn_final_record_is_ignored_and_the_complete_ones_kept():
    records = [StoredVideo('a', SCORED, 1, 2, np.arange(3.0), np.ones(3)),
               StoredVideo('b', FAILED, reason='bad header'),
               StoredVideo('c', SCORED, 0, 2, np.full(3, 0.5), np.zeros(3))]
    data = b''.join(encode_record(r) for r in records)
    last = len(encode_record(records[-1]))
    videos, torn = decode_records(data[:-5])
    assert [v.key for v in videos] == ['a', 'b'] and torn == last - 5
    np.testing.assert_array_equal(videos[0].prob_sum, np.arange(3.0))
    assert videos[1].reason == 'bad header'
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF                                          # right length, wrong checksum
    assert [v.key for v in decode_records(bytes(corrupt))[0]] == ['a', 'b']


# ---------------------------------------------------------------------------------------- a different run

@pytest.fixture
def finished_run(dataset, tmp_path, capsys):
    out = str(tmp_path / 'run')
    code, _, err = in_process(cli_args('tiny_video_net', dataset, out, '--no-flops'), capsys)
    assert code == 0, err
    return out


def test_out_of_a_different_view_spec_is_refused_naming_the_difference(dataset, finished_run, capsys):
    code, _, err = in_process(cli_args('tiny_video_net', dataset, finished_run, '--no-flops', '--frames', '8'),
                              capsys)
    assert code == 2
    assert 'different configuration' in err and 'views.frames' in err and '4' in err and '8' in err
    assert 'another --out' in err


def test_out_of_a_different_model_is_refused(dataset, finished_run, capsys):
    code, _, err = in_process(cli_args('slow_tiny_video_net', dataset, finished_run, '--no-flops'), capsys)
    assert code == 2 and "model: this folder has 'tiny_video_net', this run has 'slow_tiny_video_net'" in err


def test_out_of_a_different_dataset_is_refused(dataset, finished_run, capsys):
    code, _, err = in_process(cli_args('tiny_video_net', dataset, finished_run, '--no-flops', '--max-videos', '3'),
                              capsys)
    assert code == 2 and 'dataset.videos' in err and 'dataset.sha256' in err


def test_out_of_a_different_precision_is_refused(dataset, finished_run, capsys):
    code, _, err = in_process(cli_args('tiny_video_net', dataset, finished_run, '--no-flops', '--precision', 'bf16'),
                              capsys)
    assert code == 2 and "precision: this folder has 'fp32', this run has 'bf16'" in err


def test_rerun_of_a_finished_run_scores_nothing_and_reports_the_same(dataset, finished_run, capsys):
    before = load_run(finished_run)
    code, out, _ = in_process(cli_args('tiny_video_net', dataset, finished_run, '--no-flops'), capsys)
    after = load_run(finished_run)
    assert code == 0 and after[1]['run']['scored_this_run'] == 0
    np.testing.assert_array_equal(after[0]['probs'], before[0]['probs'])
    assert after[1]['metrics'] == before[1]['metrics'] and 'from earlier runs' in out


def test_summary_and_manifest_record_precision_and_fast_path(finished_run):
    summary = json.load(open(os.path.join(finished_run, 'summary.json')))
    manifest = json.load(open(os.path.join(finished_run, 'manifest.json')))
    assert summary['precision'] == 'fp32' and summary['fast_path'] is True
    assert manifest['identity']['precision'] == 'fp32' and manifest['identity']['fast_path'] is True
    assert manifest['identity']['weights']['seed'] == 0 and len(manifest['identity']['weights']['state_dict_sha256']) == 64


def test_eager_model_scores_as_the_fast_path(dataset, finished_run, tmp_path, capsys):
    out = str(tmp_path / 'eager')
    code, _, err = in_process(cli_args('tiny_video_net', dataset, out, '--no-flops', '--no-fast-path'), capsys)
    assert code == 0, err
    eager, fast = load_run(out), load_run(finished_run)
    assert eager[1]['fast_path'] is False
    np.testing.assert_allclose(eager[0]['probs'], fast[0]['probs'], rtol=1e-5)


# ---------------------------------------------------------------------------------------- failures

class FlakyDecoder:
    """Stands in for eval.data.decode.load_views_frames: fails the first ``failures`` calls per video, then decodes."""

    def __init__(self, failures):
        self.failures = failures
        self.calls = {}
        self.real = eval.data.records.load_views_frames

    def __call__(self, source, sampler):
        self.calls[source.path] = self.calls.get(source.path, 0) + 1
        if self.calls[source.path] <= self.failures:
            raise VideoDecodeError(f'read error #{self.calls[source.path]}')
        return self.real(source, sampler)


@pytest.fixture
def one_video(dataset):
    path = os.path.join(os.path.dirname(dataset), 'clip0.mp4')
    sampler = ViewSampler(ViewSpec(num_frames=4, sampling_rate=2, spatial_crops=1, temporal_clips=2, scale=48,
                                   crop_size=48))
    return MultiViewDataset([VideoRecord('clip0', path, label=0)], sampler)


def test_video_failing_once_is_retried_and_scored(one_video, monkeypatch):
    decoder = FlakyDecoder(failures=1)
    monkeypatch.setattr(eval.data.records, 'load_views_frames', decoder)
    item = one_video[0]
    assert isinstance(item, VideoSample) and item.plan.num_views == 2
    assert list(decoder.calls.values()) == [2]


def test_video_failing_twice_is_recorded_failed_with_its_errors(one_video, monkeypatch):
    decoder = FlakyDecoder(failures=2)
    monkeypatch.setattr(eval.data.records, 'load_views_frames', decoder)
    item = one_video[0]
    assert isinstance(item, FailedVideo)
    assert item.reason == 'attempt 1: read error #1 | attempt 2: read error #2'
    assert list(decoder.calls.values()) == [2]


@pytest.fixture
def set_with_a_broken_video(tmp_path):
    data = write_synthetic_set(str(tmp_path / 'data'), 2)
    with open(os.path.join(tmp_path, 'data', 'broken.mp4'), 'wb') as f:
        f.write(b'not a video at all')
    with open(data, 'a') as f:
        f.write('broken.mp4 1\n')
    return data


def test_failed_video_is_stored_with_its_error_and_kept_failed_on_resume(set_with_a_broken_video, tmp_path, capsys):
    out = str(tmp_path / 'run')
    # 1 broken video of 3 is above the default --max-failed; this test is about storing it, so accept it
    args = cli_args('tiny_video_net', set_with_a_broken_video, out, '--no-flops', '--max-failed', '1')
    assert in_process(args, capsys)[0] == 0
    failed = [v for _, videos, _ in ScoreStore(out).iter_files() for v in videos if v.status == FAILED]
    assert [v.key for v in failed] == ['broken'] and 'failed 2 times' in failed[0].reason
    code, stdout, _ = in_process(args, capsys)
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert code == 0 and summary['run']['scored_this_run'] == 0 and summary['run']['failed_this_run'] == 0
    assert summary['counts']['failed'] == 1 and '--retry-failed' in stdout


def test_retry_failed_tries_the_failed_videos_again(set_with_a_broken_video, tmp_path, capsys):
    out = str(tmp_path / 'run')
    args = cli_args('tiny_video_net', set_with_a_broken_video, out, '--no-flops', '--max-failed', '1')
    assert in_process(args, capsys)[0] == 0
    assert in_process(args + ['--retry-failed'], capsys)[0] == 0
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['run']['retried_failed'] == 1 and summary['run']['failed_this_run'] == 1
    assert summary['run']['scored_this_run'] == 0 and summary['counts']['scored'] == 2


# ---------------------------------------------------------------------------------------- pre-flight

def test_unwritable_out_is_reported_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    out = str(blocker / 'run')                     # under a regular file: unwritable even for root

    def no_model(*args, **kwargs):
        raise AssertionError('the model was loaded although --out is unwritable')
    monkeypatch.setattr(eval.kit.engine, 'load_model', no_model)
    code, stdout, err = in_process(cli_args('tiny_video_net', dataset, out), capsys)
    assert code == 2 and f'cannot write to --out {out}' in err
    assert 'model ' not in stdout


def test_too_little_free_space_is_reported_before_any_video_is_scored(dataset, tmp_path, capsys, monkeypatch):
    class NearlyFull:
        free = 1000
    monkeypatch.setattr(eval.kit.rundir.shutil, 'disk_usage', lambda path: NearlyFull)

    def no_scoring(*args, **kwargs):
        raise AssertionError('videos were scored although the disk is full')
    monkeypatch.setattr(eval.kit.shards, 'evaluate', no_scoring)
    code, _, err = in_process(cli_args('tiny_video_net', dataset, str(tmp_path / 'run')), capsys)
    assert code == 2 and 'MiB free' in err and f'scores of {NUM_VIDEOS} videos' in err
