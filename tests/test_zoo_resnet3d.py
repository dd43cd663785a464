"""The ResNet3D family against the facts of the Caffe2 networks: sizes, shapes, FLOPs, heads, non-local."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import zoo
from eval.kit.flops import flop_report
from zoo.resnet3d import AffineChannel3d, NonLocalBlock3d


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name, millions', [('i3d_r50', 28.04), ('i3d_nl_r50', 35.40),
                                            ('i3d_r50_8x8', 28.04), ('i3d_nl_r50_8x8', 35.40)])
def test_parameter_count_matches_the_caffe2_model(name, millions):
    assert round(n_params(zoo.create_model(name)) / 1e6, 2) == millions


def test_c2d_r50_has_exactly_the_parameters_of_a_2d_resnet50_with_400_classes():
    assert n_params(zoo.create_model('c2d_r50')) == n_params(timm.create_model('resnet50', num_classes=400))
    assert n_params(zoo.create_model('c2d_r50_8x8')) == n_params(zoo.create_model('c2d_r50'))


def _sizes_after_each_stage(model, x):
    sizes = {}
    hooks = [getattr(model, m).register_forward_hook(lambda mod, i, o, m=m: sizes.__setitem__(m, tuple(o.shape)))
             for m in ('maxpool', 'layer1', 'layer2', 'layer3', 'layer4')]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return sizes, out


def test_32x2_intermediate_sizes_at_224():
    sizes, out = _sizes_after_each_stage(zoo.create_model('i3d_r50'), torch.randn(1, 3, 32, 224, 224))
    assert sizes['maxpool'] == (1, 64, 8, 55, 55)        # conv1 stride 2 in time, pool1 (2,3,3) unpadded
    assert sizes['layer1'] == (1, 256, 8, 55, 55)        # pool2 follows res2
    assert sizes['layer2'] == (1, 512, 4, 28, 28)
    assert sizes['layer3'] == (1, 1024, 4, 14, 14)
    assert sizes['layer4'] == (1, 2048, 4, 7, 7)
    assert out.shape == (1, 400)


def test_8x8_temporal_length_is_4_in_res3_to_res5():
    sizes, out = _sizes_after_each_stage(zoo.create_model('i3d_r50_8x8'), torch.randn(1, 3, 8, 112, 112))
    assert sizes['maxpool'][2] == 8 and sizes['layer1'][2] == 8
    assert [sizes[s][2] for s in ('layer2', 'layer3', 'layer4')] == [4, 4, 4]
    assert out.shape == (1, 400)


def test_32x256_input_gives_400_scores_with_either_head():
    model = zoo.create_model('i3d_r50')
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 32, 256, 256))
        assert features.shape == (1, 2048, 4, 8, 8)
        assert model.forward_head(features).shape == (1, 400)
        assert model.forward_head(features, fully_conv=True).shape == (1, 400)


def test_network_accepts_other_clip_sizes():
    model = zoo.create_model('i3d_nl_r50')
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 160, 192)).shape == (2, 400)


def test_fvcore_flops_of_i3d_r50_match_the_reference():
    assert flop_report('i3d_r50', frames=32, crop=224).flops_per_view == pytest.approx(32.97e9, rel=0.01)
    report = flop_report('i3d_r50', views=(3, 10))
    assert (report.frames, report.crop) == (32, 256)
    assert report.flops_per_view == pytest.approx(43.11e9, rel=0.01)
    assert report.flops_per_video == pytest.approx(30 * report.flops_per_view)


def test_fvcore_flops_of_i3d_nl_r50_match_the_reference():
    assert flop_report('i3d_nl_r50', frames=32, crop=224).flops_per_view == pytest.approx(41.11e9, rel=0.01)


def test_fully_conv_head_is_the_caffe2_test_head():
    torch.manual_seed(0)
    model = zoo.create_model('i3d_r50')
    features = torch.randn(2, 2048, 4, 8, 8)
    with torch.no_grad():
        out = model.forward_head(features, fully_conv=True)
        # Caffe2: AveragePool (4,7,7) stride 1 -> (2,2) map; pred at each position; softmax; average.
        pooled = F.avg_pool3d(features, (4, 7, 7), stride=1)[:, :, 0]           # (2, 2048, 2, 2)
        probs = torch.stack([F.softmax(model.fc(pooled[:, :, i, j]), dim=1)
                             for i in range(2) for j in range(2)]).mean(0)
    assert torch.allclose(out.exp(), probs, atol=1e-7)
    assert torch.allclose(out.softmax(dim=1), probs, atol=1e-7)


def test_fully_conv_head_at_training_size_gives_the_same_probabilities_as_the_plain_head():
    model = zoo.create_model('i3d_r50')
    features = torch.randn(1, 2048, 4, 7, 7)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(features, fully_conv=True).softmax(1),
                              model.forward_head(features).softmax(1), atol=1e-6)


def test_fully_conv_test_can_be_chosen_at_creation():
    model = zoo.create_model('i3d_r50', fully_conv_test=True)
    features = torch.randn(1, 2048, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.forward_head(features), model.forward_head(features, fully_conv=True))
        assert not torch.equal(model.forward_head(features), model.forward_head(features, fully_conv=False))


def test_timm_protocol_pre_logits_and_reset_classifier():
    model = zoo.create_model('c2d_r50_8x8')
    assert model.num_features == 2048
    features = torch.randn(3, 2048, 4, 7, 7)
    assert model.forward_head(features, pre_logits=True).shape == (3, 2048)
    model.reset_classifier(11)
    assert model.get_classifier().out_features == 11 and model.num_classes == 11
    model.reset_classifier(0)
    assert model.forward_head(features).shape == (3, 2048)


def test_non_local_block_is_the_identity_when_created():
    block = NonLocalBlock3d(64).eval()
    x = torch.randn(2, 64, 4, 6, 6)
    assert torch.equal(block(x), x)


def test_non_local_block_computes_embedded_gaussian_attention():
    torch.manual_seed(0)
    block = NonLocalBlock3d(8).eval()
    torch.nn.init.ones_(block.bn.weight)
    x = torch.randn(1, 8, 2, 4, 4)
    with torch.no_grad():
        out = block(x)
        xs = x[0].reshape(8, -1)                                   # (C, THW)
        pooled = F.max_pool3d(x, (1, 2, 2), (1, 2, 2))[0].reshape(8, -1)
        w = lambda conv: conv.weight.reshape(conv.out_channels, -1)  # noqa: E731
        theta = w(block.theta) @ xs + block.theta.bias[:, None]   # (4, 32)
        phi = w(block.phi) @ pooled + block.phi.bias[:, None]      # (4, 8)
        g = w(block.g) @ pooled + block.g.bias[:, None]            # (4, 8)
        attention = torch.softmax(theta.T @ phi / math.sqrt(4), dim=1)   # (32, 8)
        y = (g @ attention.T)                                      # (4, 32)
        z = w(block.out) @ y + block.out.bias[:, None]
        bn = block.bn
        z = (z - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] \
            + bn.bias[:, None]
        expected = (xs + z).reshape(1, 8, 2, 4, 4)
    assert torch.allclose(out, expected, atol=1e-5)


def test_non_local_blocks_sit_after_blocks_1_3_of_res3_and_1_3_5_of_res4():
    model = zoo.create_model('i3d_nl_r50')
    placed = sorted(name for name, m in model.named_modules() if isinstance(m, NonLocalBlock3d))
    assert placed == ['layer2.1.non_local', 'layer2.3.non_local',
                      'layer3.1.non_local', 'layer3.3.non_local', 'layer3.5.non_local']


def test_i3d_temporal_kernels_follow_caffe2_use_temp_convs():
    model = zoo.create_model('i3d_r50')
    assert model.conv1.kernel_size == (5, 7, 7) and model.conv1.padding == (2, 3, 3)
    assert model.conv1.stride == (2, 2, 2)
    kernels = [[b.conv1.kernel_size[0] for b in stage] for stage in model.stages]
    assert kernels == [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]
    assert all(b.conv2.kernel_size == (1, 3, 3) for stage in model.stages for b in stage)
    assert [stage[0].conv2.stride for stage in model.stages] == [(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2)]
    bn_eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)}
    assert bn_eps == {1.0000001e-5}


def test_c2d_has_no_temporal_kernels():
    model = zoo.create_model('c2d_r50')
    assert all(m.kernel_size[0] == 1 for m in model.modules() if isinstance(m, torch.nn.Conv3d))


def test_frozen_bn_entries_use_affine_layers_without_running_statistics():
    model = zoo.create_model('i3d_r50_32x4')
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    assert isinstance(model.bn1, AffineChannel3d)
    keys = model.state_dict().keys()
    assert 'bn1.weight' in keys and not any('running' in k for k in keys)
