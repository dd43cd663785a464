"""python -m eval.features as a job: files per video, index, exit status, resume after kill -9, torchrun ranks,
refusals. Runs the tiny registered feature model (tests/feature_test_models.py) so each run costs seconds."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import feature_test_models  # noqa: F401  (registers the tiny models for in-process runs)

from eval.data.synthetic import write_synthetic_video
from eval_test_models import kill_mid_run
from feature_test_models import REPO_ROOT, feature_args, feature_env, python_command, torchrun_command

LENGTHS = (16, 17, 31, 32, 33, 40)      # one synthetic clip per length: c16.mp4 ...


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('features') / 'videos'
    for n in LENGTHS:
        write_synthetic_video(str(root / f'c{n}.mp4'), num_frames=n, height=40, width=48, seed=n)
    return str(root)


def run(args, seconds_per_batch=0.0, check=True, command=python_command):
    proc = subprocess.run(command(args), cwd=REPO_ROOT, env=feature_env(seconds_per_batch), capture_output=True,
                          text=True, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def in_process(args, capsys):
    """eval.features.job.main in this process (seconds cheaper than a subprocess; threads left as they are)."""
    import eval.features.job
    i = args.index('--threads')
    code = eval.features.job.main(args[:i] + args[i + 2:])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def output_files(out):
    """name -> bytes of every per-video output (arrays and sidecars)."""
    return {name: open(os.path.join(out, name), 'rb').read() for name in sorted(os.listdir(out))
            if name.endswith(('.npy', '.json')) and name not in ('index.json', 'manifest.json')}


def sidecars(out):
    return [n for n in os.listdir(out) if n.startswith('c') and n.endswith('.json')] if os.path.isdir(out) else []


def index(out):
    return json.load(open(os.path.join(out, 'index.json')))


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
    """One uninterrupted single-process run of the default preset (tail pad, so every clip gives features)."""
    out = str(tmp_path_factory.mktemp('reference') / 'out')
    run(feature_args(data, out, '--tail', 'pad'))
    return out


def test_every_video_gets_its_array_and_sidecar_and_the_run_an_index(reference):
    files = output_files(reference)
    assert sorted(files) == sorted(f'c{n}.{ext}' for n in LENGTHS for ext in ('json', 'npy'))
    for n in LENGTHS:
        array = np.load(os.path.join(reference, f'c{n}.npy'))
        sidecar = json.load(open(os.path.join(reference, f'c{n}.json')))
        assert array.shape == (-(-n // 16), 10, 24) and array.dtype == np.float32
        assert sidecar['array']['layout'] == '(snippets, crops, channels)'
        assert sidecar['video']['frames'] == n and sidecar['video']['fps'] == 25.0
        assert len(sidecar['model']['state_dict_sha256']) == 64 and sidecar['settings']['tail'] == 'pad'
        assert [c['name'] for c in sidecar['crops']['order']][:3] == ['top-left', 'top-right', 'centre']
    sidecar = json.load(open(os.path.join(reference, 'c33.json')))['snippets']
    assert sidecar['first_frame'] == [0, 16, 32] and sidecar['last_frame'] == [15, 31, 32]
    assert sidecar['start_seconds'] == [0.0, 0.64, 1.28] and sidecar['padded_frames'] == [0, 0, 15]
    counts = index(reference)['counts']
    assert counts['finished'] == counts['extracted_this_run'] == len(LENGTHS) and counts['failed'] == 0


def test_the_same_run_twice_writes_bit_identical_files(data, reference, tmp_path):
    out = str(tmp_path / 'again')
    run(feature_args(data, out, '--tail', 'pad'))
    assert output_files(out) == output_files(reference)


def test_compile_extracts_through_torch_compile_the_features_of_the_eager_fast_path(data, reference, tmp_path,
                                                                                    capsys, monkeypatch):
    calls, real = [], torch.compile

    def spy(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(torch, 'compile', spy)
    out = str(tmp_path / 'compiled')
    try:
        code, _, err = in_process(feature_args(data, out, '--tail', 'pad', '--compile'), capsys)
    finally:
        torch._dynamo.reset()                # no later test runs a graph compiled here
    assert code == 0, err
    assert len(calls) == 1
    for n in LENGTHS:
        with open(os.path.join(out, f'c{n}.json')) as f:
            assert json.load(f)['compile'] == {'compiled': True, 'requested': '--compile'}
    for n in LENGTHS:                        # inductor fuses and may reorder sums: float32 rounding
        np.testing.assert_allclose(np.load(os.path.join(out, f'c{n}.npy')),
                                   np.load(os.path.join(reference, f'c{n}.npy')), rtol=1e-5, atol=1e-6)


def test_two_torchrun_ranks_write_the_files_of_one_process(data, reference, tmp_path):
    out = str(tmp_path / 'two')
    proc = run(feature_args(data, out, '--tail', 'pad'), command=lambda a: torchrun_command(2, a))
    assert output_files(out) == output_files(reference)       # both runs use 1 thread per process: bit-identical
    assert index(out)['run']['world_size'] == 2 and index(out)['counts']['extracted_this_run'] == len(LENGTHS)
    assert proc.stdout.count('done     6 of 6 videos') == 1   # only rank 0 speaks


def test_killed_run_resumes_to_identical_files_without_redoing_finished_videos(data, reference, tmp_path):
    def args_of(attempt):
        return feature_args(data, str(tmp_path / f'killed{attempt}'), '--tail', 'pad', model='slow_tiny_feature_net')

    def launch(delay, attempt):
        return subprocess.Popen(python_command(args_of(attempt)), cwd=REPO_ROOT, env=feature_env(delay),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    attempt, _ = kill_mid_run(launch, lambda attempt: len(sidecars(str(tmp_path / f'killed{attempt}'))),
                              total=len(LENGTHS))
    out, args = str(tmp_path / f'killed{attempt}'), args_of(attempt)
    finished = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in sidecars(out)}
    assert 1 <= len(finished) < len(LENGTHS), f'the kill came too late or too early: {sorted(finished)}'
    assert not os.path.exists(os.path.join(out, 'index.json'))

    proc = run(args)                                            # the same command resumes
    assert f'resume   {len(finished)} videos already finished' in proc.stdout
    for name, mtime in finished.items():                        # finished videos were not written again
        assert os.stat(os.path.join(out, name)).st_mtime_ns == mtime
    counts = index(out)['counts']
    assert counts['finished_earlier'] == len(finished) and counts['extracted_this_run'] == len(LENGTHS) - len(finished)
    resumed, expected = output_files(out), output_files(reference)
    for name in expected:                                       # same features; the sidecars differ only by model name
        if name.endswith('.npy'):
            assert resumed[name] == expected[name], name
    no_temporaries = [n for n in os.listdir(out) if '.tmp' in n]
    assert not no_temporaries


def test_a_corrupted_array_is_extracted_again_on_resume(data, tmp_path, capsys):
    out = str(tmp_path / 'out')
    assert in_process(feature_args(data, out, '--tail', 'pad'), capsys)[0] == 0
    with open(os.path.join(out, 'c16.npy'), 'r+b') as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x40]))                         # one bit of the last feature flipped
    assert in_process(feature_args(data, out, '--tail', 'pad'), capsys)[0] == 0
    counts = index(out)['counts']
    assert counts['extracted_this_run'] == 1 and counts['finished_earlier'] == len(LENGTHS) - 1


def test_a_different_configuration_in_the_same_out_is_refused_naming_the_difference(data, reference, capsys):
    code, _, err = in_process(feature_args(data, reference, '--tail', 'drop'), capsys)
    assert code == 2
    assert "settings.tail: this folder has 'pad', this run has 'drop'" in err and 'another --out' in err


def test_failures_are_recorded_and_the_exit_status_follows_max_failed(data, tmp_path, capsys):
    root = tmp_path / 'mixed'
    root.mkdir()
    for name in ('c16.mp4', 'c33.mp4'):
        os.symlink(os.path.join(data, name), root / name)
    (root / 'broken.mp4').write_bytes(b'\x00' * 4096)
    write_synthetic_video(str(root / 'short.mp4'), num_frames=10, height=40, width=48)
    listing = tmp_path / 'list.txt'
    listing.write_text('\n'.join(str(root / n) for n in ('c16.mp4', 'broken.mp4', 'short.mp4', 'gone.mp4')) + '\n')

    code, _, err = in_process(feature_args(str(listing), str(tmp_path / 'out')), capsys)
    assert code == 1                       # 1 of the 2 decodable-or-not videos failed > 1% (refused, missing apart)
    assert err.strip().splitlines()[-1] == ('error: 1 of 2 videos found failed to decode (50.0%), more than '
                                            '--max-failed 0.01 allows (see index.json); exit status 1')
    statuses = {v['id']: (v['status'], v.get('reason', '')) for v in index(str(tmp_path / 'out'))['videos']}
    assert statuses['c16'][0] == 'extracted' and statuses['gone'][0] == 'missing'
    assert statuses['broken'][0] == 'failed' and 'failed 2 times' in statuses['broken'][1]     # retried once
    assert statuses['short'][0] == 'refused' and 'shorter than one 16-frame snippet' in statuses['short'][1]
    assert os.path.exists(tmp_path / 'out' / 'c16.npy')                   # outputs written before the exit

    code, out, _ = in_process(feature_args(str(listing), str(tmp_path / 'out2'), '--max-failed', '0.5'), capsys)
    assert code == 0 and 'done     1 of 4 videos' in out


def test_a_resumed_run_keeps_recorded_failures_unless_retry_failed(data, tmp_path, capsys):
    root = tmp_path / 'mixed'
    root.mkdir()
    os.symlink(os.path.join(data, 'c16.mp4'), root / 'c16.mp4')
    (root / 'broken.mp4').write_bytes(b'\x00' * 4096)
    out = str(tmp_path / 'out')
    assert in_process(feature_args(str(root), out, '--max-failed', '1'), capsys)[0] == 0
    record = json.load(open(os.path.join(out, 'failed', 'broken.json')))      # written when it failed
    assert record['kind'] == 'decode' and 'failed 2 times' in record['reason']

    code, stdout, _ = in_process(feature_args(str(root), out, '--max-failed', '1'), capsys)
    assert code == 0 and '1 failed earlier and kept failed' in stdout and '0 to do' in stdout
    statuses = {v['id']: (v['status'], v.get('reason', '')) for v in index(out)['videos']}
    assert statuses['broken'][0] == 'failed' and 'recorded by an earlier run' in statuses['broken'][1]

    shutil.copy(os.path.join(data, 'c33.mp4'), root / 'broken.mp4')         # the file was repaired
    code, stdout, _ = in_process(feature_args(str(root), out, '--max-failed', '1', '--retry-failed'), capsys)
    assert code == 0 and '1 failed earlier and tried again' in stdout and '1 to do' in stdout
    assert index(out)['counts']['extracted_this_run'] == 1 and index(out)['counts']['failed'] == 0
    assert np.load(os.path.join(out, 'broken.npy')).shape[0] == (33 - 16) // 16 + 1      # tail drop: 2 snippets
    assert not os.path.exists(os.path.join(out, 'failed', 'broken.json'))   # the record goes with the failure


def test_nothing_extracted_exits_non_zero_saying_so(tmp_path, capsys):
    root = tmp_path / 'videos'
    root.mkdir()
    (root / 'broken.mp4').write_bytes(b'\x00' * 4096)
    code, _, err = in_process(feature_args(str(root), str(tmp_path / 'out'), '--max-failed', '1'), capsys)
    assert code == 1 and err.strip().splitlines()[-1] == ('error: no video was extracted: all 1 videos found failed '
                                                          'to decode (see index.json); exit status 1')


def test_unwritable_out_is_refused_before_the_model_is_loaded(data, tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    code, _, err = in_process(['--model', 'no_such_model', '--data', data, '--out', str(blocker / 'out'),
                               '--threads', '1'], capsys)
    assert code == 2 and f'cannot write to --out {blocker / "out"}' in err
    assert 'no_such_model' not in err


def test_unknown_layer_is_refused_naming_it(data, tmp_path, capsys):
    code, _, err = in_process(feature_args(data, str(tmp_path / 'out'), '--layer', 'res9'), capsys)
    assert code == 2 and "--layer 'res9'" in err and 'valid: pre_logits' in err


def test_npz_format_and_a_layer_flag(data, tmp_path, capsys):
    out = str(tmp_path / 'npz')
    code, _, err = in_process(feature_args(data, out, '--format', 'npz', '--crops', '1', '--layer', 'layer1',
                                           '--stride', '8'), capsys)
    assert code == 0, err
    with np.load(os.path.join(out, 'c40.npz')) as f:
        assert f['features'].shape == (4, 16)                   # floor((40 - 16) / 8) + 1 snippets, 16 channels
    assert json.load(open(os.path.join(out, 'c40.json')))['layer']['module'] == 'layer1'


def test_snippets_too_short_for_the_model_are_refused_naming_its_minimum(data, tmp_path, capsys):
    code, _, err = in_process(['--model', 'i3d_r50', '--random-weights', '--data', data, '--out', str(tmp_path / 'o'),
                               '--snippet', '4', '--stride', '4', '--threads', '1', '--no-progress'], capsys)
    assert code == 2 and '--snippet 4 / --crop-size 224: i3d_r50 needs clips of at least 7 frames' in err


def test_hdf5_holds_every_finished_video_as_its_files_and_is_rebuilt_by_later_runs(data, reference, tmp_path, capsys):
    h5py = pytest.importorskip('h5py')
    out = str(tmp_path / 'h5')
    shutil.copytree(reference, out)                              # a finished run: --hdf5 now only packs it
    os.remove(os.path.join(out, 'c40.npy'))                      # ... except one video, extracted again
    code, stdout, err = in_process(feature_args(data, out, '--tail', 'pad', '--hdf5'), capsys)
    assert code == 0, err
    assert f'hdf5     {os.path.join(out, "features.h5")}: {len(LENGTHS)} videos' in stdout
    with h5py.File(os.path.join(out, 'features.h5'), 'r') as h5:
        assert json.loads(h5.attrs['run'])['settings']['tail'] == 'pad'
        assert sorted(h5) == sorted(f'c{n}' for n in LENGTHS)
        for n in LENGTHS:
            group, sidecar = h5[f'c{n}'], json.load(open(os.path.join(out, f'c{n}.json')))
            assert np.array_equal(group['features'][()], np.load(os.path.join(reference, f'c{n}.npy')))
            assert group['features'].dtype == np.float32
            assert group['first_frame'][()].tolist() == sidecar['snippets']['first_frame']
            assert group['last_frame'][()].tolist() == sidecar['snippets']['last_frame']
            assert np.allclose(group['end_seconds'][()], sidecar['snippets']['end_seconds'])
            assert group.attrs['id'] == f'c{n}' and group.attrs['frames'] == n
            assert json.loads(group.attrs['sidecar']) == sidecar
    # a later run in the folder, without --hdf5, does not leave the file describing the older state
    for name in ('c33.npy', 'c33.json'):
        os.remove(os.path.join(out, name))
    with h5py.File(os.path.join(out, 'features.h5'), 'a') as h5:     # the file as it would have been before
        before = h5['c33/features'][()]
        del h5['c33']
    code, _, err = in_process(feature_args(data, out, '--tail', 'pad'), capsys)
    assert code == 0, err
    with h5py.File(os.path.join(out, 'features.h5'), 'r') as h5:
        assert np.array_equal(h5['c33/features'][()], before) and len(h5) == len(LENGTHS)
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


def test_hdf5_without_h5py_is_refused_before_any_work(data, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'h5py' else real(name, *a))
    out = str(tmp_path / 'o')
    code, _, err = in_process(feature_args(data, out, '--hdf5'), capsys)
    assert code == 2 and '--hdf5 needs h5py, which is not installed: pip install h5py' in err
    assert not sidecars(out)
