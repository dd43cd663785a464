"""Inflating a 2D ResNet-50 (timm or torchvision) into the 3D zoo networks."""
import pytest
import timm
import torch
import torchvision

import zoo
from zoo.inflate import deflate_conv_weight, inflate_conv_weight, inflate_state_dict
from zoo.resnet3d import CAFFE2_BN_EPS


def caffe2_like_resnet50(num_classes=400, seed=0):
    """A timm ResNet-50 with non-trivial BN statistics and the Caffe2 stem (pool1 unpadded, BN eps)."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet50', num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = CAFFE2_BN_EPS
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    model.maxpool = torch.nn.MaxPool2d(3, stride=2, padding=0)  # Caffe2 pool1 has no padding
    return model.eval()


def test_inflate_then_deflate_returns_the_2d_kernel():
    w = torch.randn(64, 3, 7, 7)
    inflated = inflate_conv_weight(w, 5)
    assert inflated.shape == (64, 3, 5, 7, 7)
    assert torch.equal(inflated[:, :, 2], w / 5)
    assert torch.allclose(deflate_conv_weight(inflated), w, atol=1e-6)


def test_inflation_from_timm_resnet50_places_every_backbone_key():
    model = zoo.create_model('i3d_r50')
    report = inflate_state_dict(timm.create_model('resnet50').state_dict(), model)
    assert report.unused == []
    assert [k for k, _, _ in report.mismatched] == ['fc.weight', 'fc.bias']   # 1000 vs 400 classes
    assert report.missing == []
    assert len(report.inflated) == 53                        # conv1 + 16 blocks x 3 + 4 shortcuts
    assert report.state_dict['conv1.weight'].shape == (64, 3, 5, 7, 7)
    assert report.state_dict['layer1.0.conv1.weight'].shape == (64, 64, 3, 1, 1)
    model.load_state_dict(report.state_dict)


def test_inflation_from_torchvision_resnet50_matches_timm_keys():
    model = zoo.create_model('c2d_r50', num_classes=1000)
    report = inflate_state_dict(torchvision.models.resnet50().state_dict(), model)
    assert report.complete, str(report)


def test_inflation_reports_keys_it_cannot_place():
    model = zoo.create_model('i3d_nl_r50')
    state = timm.create_model('resnet50').state_dict()
    state['head.extra.weight'] = torch.zeros(3)
    report = inflate_state_dict(state, model)
    assert report.unused == ['head.extra.weight']
    assert 'layer2.1.non_local.theta.weight' in report.missing
    assert all('.non_local.' in k for k in report.missing)
    assert len(report.missing) == 5 * 13                     # 5 blocks x (4 convs x 2 + BN 2 params + 3 buffers)
    assert 'unused 2D key: head.extra.weight' in str(report)
    with pytest.raises(RuntimeError, match='incomplete'):
        inflate_state_dict(state, model, strict=True)


def relative_error(a, b):
    """Largest deviation relative to the largest magnitude: features of a random ResNet reach ~1e3."""
    return ((a - b).abs().max() / b.abs().max()).item()


def _inflated(name, resnet2d):
    model = zoo.create_model(name, num_classes=400)
    model.load_state_dict(inflate_state_dict(resnet2d.state_dict(), model, strict=False).state_dict)
    return model


def test_static_clip_through_inflated_c2d_gives_the_2d_features_at_every_time():
    resnet2d = caffe2_like_resnet50()
    model = _inflated('c2d_r50_8x8', resnet2d)
    frame = torch.randn(1, 3, 128, 128)
    clip = frame[:, :, None].expand(1, 3, 8, 128, 128).contiguous()
    with torch.no_grad():
        features_2d = resnet2d.forward_features(frame)        # (1, 2048, 4, 4)
        features_3d = model.forward_features(clip)            # (1, 2048, 4, 4, 4)
    assert features_3d.shape[2] == 4
    for t in range(4):
        assert relative_error(features_3d[:, :, t], features_2d) < 1e-5, t


def test_static_clip_through_inflated_i3d_gives_the_2d_features_away_from_temporal_padding():
    resnet2d = caffe2_like_resnet50(seed=1)
    model = _inflated('i3d_r50', resnet2d)
    frame = torch.randn(1, 3, 64, 64)
    clip = frame[:, :, None].expand(1, 3, 160, 64, 64).contiguous()   # receptive field ~131 frames
    with torch.no_grad():
        features_2d = resnet2d.forward_features(frame)
        features_3d = model.forward_features(clip)            # (1, 2048, 20, 2, 2)
    assert features_3d.shape[2] == 20
    centre = features_3d[:, :, 10]
    assert relative_error(centre, features_2d) < 1e-5
    # the first position sees the zero temporal padding, so it must differ
    assert relative_error(features_3d[:, :, 0], features_2d) > 1e-2
