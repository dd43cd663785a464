"""Registry, pretrained configs, create_model options and the timm plugin."""
import pytest
import timm
import torch

import zoo
from zoo.resnet3d import ResNet3D

CAFFE2_ENTRIES = ['c2d_nl_r50', 'c2d_nl_r50_8x8', 'c2d_r50', 'c2d_r50_8x8', 'i3d_nl_r50', 'i3d_nl_r50_128x1',
                  'i3d_nl_r50_32x4', 'i3d_nl_r50_8x8', 'i3d_r50', 'i3d_r50_128x1', 'i3d_r50_32x4', 'i3d_r50_8x8']


def test_list_models_filters_with_shell_patterns():
    assert zoo.list_models('i3d*r50') == ['i3d_nl_r50', 'i3d_r50']
    assert zoo.list_models('*_8x8') == ['c2d_nl_r50_8x8', 'c2d_r50_8x8', 'i3d_nl_r50_8x8', 'i3d_r50_8x8']
    assert set(CAFFE2_ENTRIES) <= set(zoo.list_models())
    assert zoo.list_models('i3d_*r50*', exclude_filters='*nl*') == ['i3d_r50', 'i3d_r50_128x1', 'i3d_r50_32x4',
                                                                'i3d_r50_8x8']


def test_list_models_pretrained_keeps_entries_with_a_weight_source():
    pretrained = zoo.list_models(pretrained=True)
    assert set(CAFFE2_ENTRIES) <= set(pretrained)
    assert all(zoo.get_pretrained_cfg(n).has_weights for n in pretrained)


def test_is_model():
    assert zoo.is_model('i3d_r50')
    assert not zoo.is_model('i3d_r51')


def test_unknown_name_error_suggests_closest_names():
    with pytest.raises(KeyError) as err:
        zoo.create_model('i3d_resnet50')
    assert "unknown model 'i3d_resnet50'" in str(err.value)
    assert 'i3d_r50' in str(err.value)
    with pytest.raises(KeyError, match='did you mean .*c2d_nl_r50'):
        zoo.get_pretrained_cfg('c2d_nl_r5')


def test_pretrained_cfg_of_i3d_r50_describes_the_caffe2_checkpoint():
    cfg = zoo.get_pretrained_cfg('i3d_r50')
    assert (cfg.num_frames, cfg.sampling_rate) == (32, 2)
    assert cfg.mean == (114.75,) * 3 and cfg.std == (57.375,) * 3 and cfg.value_range == (0.0, 255.0)
    assert cfg.channel_order == 'RGB'
    assert (cfg.crop_size, cfg.test_scale, cfg.test_crop_size, cfg.test_views) == (224, 256, 256, (3, 10))
    assert cfg.url == 'https://dl.fbaipublicfiles.com/video-nonlocal/i3d_baseline_32x2_IN_pretrain_400k.pkl'
    assert cfg.source_format == 'caffe2_pickle' and cfg.sha256 is None
    assert cfg.license == 'CC-BY-NC-4.0'
    assert (cfg.top1, cfg.top5, cfg.paper_top1) == (73.6, 90.8, 73.3)
    assert cfg.num_classes == 400 and len(cfg.class_names) == 400
    assert cfg.class_names[0] == 'abseiling' and cfg.class_names[-1] == 'zumba'
    assert list(cfg.class_names) == sorted(cfg.class_names)
    assert cfg.input_size == (3, 32, 224, 224)


def test_8x8_configs_sample_8_frames_at_rate_8():
    for name in ('i3d_r50_8x8', 'i3d_nl_r50_8x8', 'c2d_r50_8x8', 'c2d_nl_r50_8x8'):
        cfg = zoo.get_pretrained_cfg(name)
        assert (cfg.num_frames, cfg.sampling_rate) == (8, 8), name
        assert cfg.source_name.endswith('_8x8_IN_pretrain_400k')


def test_pretrained_cfg_overlay_replaces_fields_and_rejects_unknown_ones():
    model = zoo.create_model('c2d_r50_8x8', pretrained_cfg_overlay=dict(file='/data/x.pkl', top1=1.0))
    assert model.pretrained_cfg.file == '/data/x.pkl' and model.pretrained_cfg.top1 == 1.0
    assert zoo.get_pretrained_cfg('c2d_r50_8x8').file is None  # the registry is untouched
    with pytest.raises(ValueError, match='unknown pretrained-config field'):
        zoo.create_model('c2d_r50_8x8', pretrained_cfg_overlay=dict(frames=16))


def test_create_model_returns_eval_mode_network_with_its_config():
    model = zoo.create_model('i3d_r50')
    assert isinstance(model, ResNet3D) and not model.training
    assert model.pretrained_cfg is not None and model.pretrained_cfg.architecture == 'i3d_r50'
    assert model.num_classes == 400 and model.get_classifier().out_features == 400


def test_num_classes_replaces_only_the_head():
    base = zoo.create_model('i3d_r50').state_dict()
    new = zoo.create_model('i3d_r50', num_classes=101).state_dict()
    assert new['fc.weight'].shape == (101, 2048) and new['fc.bias'].shape == (101,)
    assert {k: v.shape for k, v in base.items() if not k.startswith('fc.')} == \
        {k: v.shape for k, v in new.items() if not k.startswith('fc.')}


def test_checkpoint_path_loads_a_state_dict_file(tmp_path):
    torch.manual_seed(0)
    source = zoo.create_model('c2d_r50_8x8', drop_rate=0.0)
    torch.save(source.state_dict(), tmp_path / 'w.pth')
    loaded = zoo.create_model('c2d_r50_8x8', checkpoint_path=str(tmp_path / 'w.pth'))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_checkpoint_path_keeps_a_new_head_when_num_classes_differs(tmp_path):
    source = zoo.create_model('c2d_r50_8x8')
    torch.save(source.state_dict(), tmp_path / 'w.pth')
    loaded = zoo.create_model('c2d_r50_8x8', num_classes=10, checkpoint_path=str(tmp_path / 'w.pth'))
    assert loaded.fc.weight.shape == (10, 2048)
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)


def test_checkpoint_that_does_not_fit_names_every_bad_key(tmp_path):
    state = zoo.create_model('c2d_r50_8x8').state_dict()
    del state['layer1.0.conv1.weight']
    state['extra.weight'] = torch.zeros(1)
    state['conv1.weight'] = torch.zeros(64, 3, 5, 7, 7)
    torch.save(state, tmp_path / 'bad.pth')
    with pytest.raises(RuntimeError) as err:
        zoo.create_model('c2d_r50_8x8', checkpoint_path=str(tmp_path / 'bad.pth'))
    message = str(err.value)
    assert 'missing from checkpoint: layer1.0.conv1.weight' in message
    assert 'not in model: extra.weight' in message
    assert 'conv1.weight' in message and '(64, 3, 5, 7, 7)' in message


def test_pth_checkpoints_are_loaded_weights_only(tmp_path):
    import argparse
    torch.save({'conv1.weight': argparse.Namespace(x=1)}, tmp_path / 'evil.pth')  # an arbitrary class
    with pytest.raises(RuntimeError, match='weights-only'):
        zoo.create_model('c2d_r50_8x8', checkpoint_path=str(tmp_path / 'evil.pth'))


def test_timm_lists_and_creates_zoo_entries():
    assert set(CAFFE2_ENTRIES) <= set(timm.list_models('*'))
    model = timm.create_model('i3d_nl_r50_8x8')
    assert isinstance(model, ResNet3D)
    assert model.pretrained_cfg == zoo.get_pretrained_cfg('i3d_nl_r50_8x8')
    assert timm.create_model('c2d_r50', num_classes=7).fc.out_features == 7


def test_timm_network_equals_zoo_network_for_the_same_weights():
    ours = zoo.create_model('i3d_r50_8x8')
    theirs = timm.create_model('i3d_r50_8x8')
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    x = torch.randn(1, 3, 8, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_pretrained_without_a_weight_source_is_a_clear_error():
    with pytest.raises(RuntimeError, match='no pretrained weights'):
        zoo.create_model('i3d_r50', pretrained=True, pretrained_cfg_overlay=dict(url=None))
