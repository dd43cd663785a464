"""eval.features --precision: bf16 features of DeepMind's I3D on the real Kinetics clips within the stated
tolerance of fp32 (docs/features.md: relative L2 error of each window's feature under 2e-2, cosine above 0.999;
measured 1.1e-2 and 0.99994), and the precision in the sidecar and manifest of a command-line run."""
import json
import os

import numpy as np
import pytest
import torch

import feature_test_models  # noqa: F401  (registers tiny_feature_net)
import zoo
from eval.data.synthetic import write_synthetic_video
from eval.features.job import main as features_main
from eval.features.presets import resolve_settings
from eval.features.stream import VideoJob, normalisation, prepare_feature_model, run_chunk, stream_video_checked
from eval.kit.runtime import resolve_precision
from feature_test_models import SMALL

BF16_MAX_RELATIVE_L2 = 2e-2
BF16_MIN_COSINE = 0.999


@pytest.fixture(scope='module')
def first_window(shared_dir):
    """The first 64-frame window of each real clip, decoded and cropped as the i3d-inception preset does."""
    folder = os.path.join(shared_dir, 'data', 'kinetics-clips')
    if not os.path.isdir(folder):
        pytest.skip(f'{folder} is not present')
    settings = resolve_settings('i3d-inception')
    chunks = []
    for name in ('arm_wrestling.mp4', 'cleaning_pool.mp4'):
        path = os.path.join(folder, name)
        chunks.append(next(iter(stream_video_checked(VideoJob(0, name, path, name), settings, 1))))
    return settings, chunks


def test_bf16_features_of_the_real_clips_are_within_the_stated_tolerance_of_fp32(first_window):
    settings, chunks = first_window
    model = zoo.create_model('i3d_inception', pretrained=True)
    pixels = normalisation(settings, model.pretrained_cfg)
    device = torch.device('cpu')
    features = {}
    for name in ('fp32', 'bf16'):
        net = prepare_feature_model(model, settings.layer, device, precision=resolve_precision(name, device))
        features[name] = np.concatenate([run_chunk(net, c, settings, pixels, device) for c in chunks]).reshape(
            len(chunks), -1).astype(np.float64)
    a, b = features['fp32'], features['bf16']
    assert a.shape == (2, 1024) and features['bf16'].dtype == np.float64
    relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert relative.max() < BF16_MAX_RELATIVE_L2 and cosine.min() > BF16_MIN_COSINE
    assert relative.min() > 0                     # bf16 did run: not the fp32 network again


@pytest.mark.parametrize('fast_path', [True, False])
def test_sidecar_and_manifest_record_the_precision(tmp_path, fast_path):
    video = tmp_path / 'v.mp4'
    write_synthetic_video(str(video), num_frames=16, height=40, width=48, seed=2)
    arrays = {}
    for precision in ('fp32', 'bf16'):
        out = tmp_path / precision
        code = features_main(['--model', 'tiny_feature_net', '--random-weights', '--data', str(video), '--out',
                              str(out), '--workers', '0', '--no-progress', '--snippet', '16', '--stride', '16',
                              '--precision', precision, *SMALL] + ([] if fast_path else ['--no-fast-path']))
        assert code == 0
        sidecar, manifest = (json.load(open(out / n)) for n in ('v.json', 'manifest.json'))
        assert manifest['identity']['network']['precision'] == precision
        assert sidecar['network'] == manifest['identity']['network']
        assert 'tf32' not in sidecar['network']          # a CPU run: no TF32 switch to record
        arrays[precision] = np.load(out / 'v.npy')
    assert arrays['bf16'].dtype == np.float32
    np.testing.assert_allclose(arrays['bf16'], arrays['fp32'], rtol=5e-2, atol=2e-2)
    assert not np.array_equal(arrays['bf16'], arrays['fp32'])
