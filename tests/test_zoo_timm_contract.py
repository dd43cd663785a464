"""timm's contract for every entry: the pretrained config as timm reads it, features_only, grad checkpointing,
layer-wise LR decay, heads and pools, device/dtype, smallest clips, torch.compile; the grouped non-local models.

timm's own tests/test_models.py also runs over our entries (tests/timm_models/run.py, in CI); the checks of the
two timm tests that cannot hold for (N, C, T, H, W) maps are restated here on the video axes.
"""
import collections
import math

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from timm.models._features import FeatureGetterNet, FeatureListNet
from timm.models._manipulate import group_parameters

import zoo
from caffe2_checkpoints import write_caffe2_checkpoint
from converters.caffe2_mapping import zoo_key
from zoo.inception_i3d import InceptionI3d, mixed_5c_size
from zoo.resnet3d import GlobalPool3d, NonLocalBlock3d, ResNet3D

# the zoo's own entries only: other test modules register tiny test models, and which of them are
# registered at collection time depends on the order the files are collected in
ENTRIES = [n for n in zoo.list_models() if zoo.get_pretrained_cfg(n).source_format]
RESNETS = [n for n in ENTRIES if n != 'i3d_inception']


def _trunk_clip(name, batch=1, seed=0):
    """A small clip the trunk of every entry takes (each stage keeps some extent); the Inception-I3D head
    would need 9x193x193, so tests of the trunk alone use this."""
    cfg = zoo.get_pretrained_cfg(name)
    frames, size = max(cfg.min_frames, 8), 32
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _seeded(name, **kwargs):
    torch.manual_seed(0)
    return zoo.create_model(name, **kwargs)


# --- the pretrained config as timm reads it ------------------------------------------------------------------

def test_config_maps_timm_keys_from_the_video_fields():
    cfg = zoo.get_pretrained_cfg('i3d_r50')
    assert cfg.mean == (114.75,) * 3 and cfg.std == (57.375,) * 3          # ours: on 0-255 pixels
    assert cfg['mean'] == pytest.approx((0.45,) * 3) and cfg['std'] == pytest.approx((0.225,) * 3)  # timm: 0-1
    assert cfg['input_size'] == (3, 32, 224, 224) and cfg.get('test_input_size') == (3, 32, 256, 256)
    assert cfg['min_input_size'] == (3, 7, 5, 5) and cfg['pool_size'] == (4, 7, 7)
    assert cfg['crop_pct'] == 224 / 256 and cfg['interpolation'] == 'bilinear' and cfg['crop_mode'] == 'center'
    assert (cfg['classifier'], cfg['first_conv'], cfg['num_classes']) == ('fc', 'conv1', 400)
    assert cfg['hf_hub_id'] == '' and cfg['tag'] == 'c2_kinetics400' and cfg['license'] == 'CC-BY-NC-4.0'
    assert cfg['num_frames'] == 32 and cfg['sampling_rate'] == 2 and cfg['top1'] == 73.6  # video fields are keys too
    assert set(timm.models.PretrainedCfg.__dataclass_fields__) <= set(cfg)


@pytest.mark.parametrize('name', ENTRIES)
def test_timm_registry_holds_the_same_config(name):
    ours = zoo.get_pretrained_cfg(name)
    theirs = timm.models.get_pretrained_cfg(name)
    assert f'{name}.{ours.tag}' in timm.list_pretrained(f'{name}.*')
    assert timm.models.is_model_pretrained(name)
    for key, value in theirs.__dict__.items():
        assert ours[key] == value, key


def test_list_pretrained_names_tags():
    assert {'i3d_r50.c2_kinetics400', 'i3d_nl_r50_128x1.c2_kinetics400', 'i3d_nl_r50_32x4.c2_kinetics400',
            'i3d_inception.dm_kinetics400'} <= set(timm.list_pretrained('i3d*'))


def test_resolve_model_data_config_reads_the_model_config():
    model = timm.create_model('i3d_inception.dm_kinetics400', device='meta')
    data = timm.data.resolve_model_data_config(model)
    assert data['input_size'] == (3, 64, 224, 224) and data['interpolation'] == 'bilinear'
    assert data['mean'] == (0.5,) * 3 and data['std'] == (0.5,) * 3 and data['crop_pct'] == 224 / 256


def test_overlay_takes_timm_keys_in_timm_units():
    model = zoo.create_model('i3d_r50', device='meta',
                             pretrained_cfg_overlay=dict(input_size=(3, 16, 112, 112), mean=(0.5,) * 3))
    cfg = model.pretrained_cfg
    assert (cfg.num_frames, cfg.crop_size, cfg.mean) == (16, 112, (127.5,) * 3)
    assert cfg['input_size'] == (3, 16, 112, 112) and cfg['mean'] == (0.5,) * 3
    with pytest.raises(ValueError, match='unknown pretrained-config field'):
        zoo.create_model('i3d_r50', device='meta', pretrained_cfg_overlay=dict(no_such_key='x'))
    # a timm key the record fixes (timm's save_for_hf writes it) is accepted only with the record's value
    with pytest.raises(ValueError, match="hf_hub_filename='x': these video models have hf_hub_filename=None"):
        zoo.create_model('i3d_r50', device='meta', pretrained_cfg_overlay=dict(hf_hub_filename='x'))


@pytest.fixture(scope='module')
def grouped_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('caffe2') / 'i3d_nonlocal_32x4_I3D_pretrain_400k.pkl'
    return path, write_caffe2_checkpoint(path, 'i3d_nl_r50_32x4', seed=5)


def test_timm_create_model_pretrained_goes_through_the_caffe2_loader(grouped_checkpoint, tmp_path, monkeypatch):
    path, weights = grouped_checkpoint
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path))
    net = timm.create_model('i3d_nl_r50_32x4.c2_kinetics400', pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path)))
    state_dict = net.state_dict()
    for blob, array in weights.items():
        assert torch.equal(state_dict[zoo_key(blob)], torch.from_numpy(array)), blob
    assert list((tmp_path / 'converted').glob('i3d_nl_r50_32x4-*.safetensors'))


def test_pretrained_with_one_input_channel_sums_the_rgb_kernels(grouped_checkpoint, tmp_path, monkeypatch):
    path, weights = grouped_checkpoint
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path))
    net = timm.create_model('i3d_nl_r50_32x4', pretrained=True, in_chans=1, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(path)))
    expected = torch.from_numpy(weights['conv1_w']).sum(dim=1, keepdim=True)
    torch.testing.assert_close(net.conv1.weight, expected, rtol=0, atol=0)  # the same three-term float sum


# --- features, intermediates, checkpointing --------------------------------------------------------------------

def _forward_taps(model, x):
    """Each feature_info module's output during one forward of the trunk (hooks)."""
    taps, hooks = {}, []
    for info in model.feature_info:
        module = model.get_submodule(info['module'])
        hooks.append(module.register_forward_hook(lambda m, i, o, key=info['module']: taps.setdefault(key, o.clone())))
    with torch.no_grad():
        model.forward_features(x)
    for hook in hooks:
        hook.remove()
    return [taps[info['module']] for info in model.feature_info]


@pytest.mark.parametrize('name', ENTRIES)
def test_features_only_maps_are_the_intermediate_maps_of_a_forward(name):
    x = _trunk_clip(name)
    expected = _forward_taps(_seeded(name), x)
    frames, size = x.shape[2], x.shape[3]
    for feature_cls in ('list', 'getter'):
        features = _seeded(name, features_only=True, feature_cls=feature_cls)
        assert isinstance(features, FeatureListNet if feature_cls == 'list' else FeatureGetterNet)
        with torch.no_grad():
            maps = features(x)
        assert len(maps) == len(expected) == 5
        # The same modules run on the same input in the same order: bitwise equal.
        for got, want in zip(maps, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    info = features.feature_info
    for got, channels, reduction, temporal in zip(maps, info.channels(), info.reduction(),
                                                  info.get('temporal_reduction')):
        # SAME padding (Inception) rounds up at each stride; the Caffe2 pools are unpadded (rounded down).
        assert got.shape[1] == channels
        if name == 'i3d_inception':
            assert got.shape[2:] == (math.ceil(frames / temporal), math.ceil(size / reduction),
                                     math.ceil(size / reduction))
    if name != 'i3d_inception':
        assert [tuple(m.shape[2:]) for m in maps] == features.model.spec.feature_sizes(frames, size)
        assert info.get('temporal_reduction') == list(features.model.spec.temporal_reductions())


@pytest.mark.parametrize('name', ['i3d_nl_r50_32x4', 'c2d_r50', 'i3d_inception'])
def test_out_indices_pick_taps_and_stop_early_ends_there(name):
    model = _seeded(name)
    x = _trunk_clip(name)
    with torch.no_grad():
        everything = model.forward_intermediates(x, intermediates_only=True)
        final, picked = model.forward_intermediates(x, indices=[1, 3], stop_early=True)
        features = _seeded(name, features_only=True, out_indices=(1, 3))(x)
    for got in (picked, features):
        torch.testing.assert_close(got[0], everything[1], rtol=0, atol=0)
        torch.testing.assert_close(got[1], everything[3], rtol=0, atol=0)
    torch.testing.assert_close(final, everything[3], rtol=0, atol=0)


# One of each kind of trunk: plain blocks, grouped non-local blocks with frozen BN, Inception modules.
@pytest.mark.parametrize('name', ['c2d_r50_8x8', 'i3d_nl_r50_32x4', 'i3d_nl_r50', 'i3d_inception'])
def test_grad_checkpointing_gives_the_same_gradients_and_running_statistics(name):
    """Checkpointing is observed (the convolutions of the trunk run twice, in forward and again in backward to
    recompute what was not kept; once without) and changes no number."""
    x = _trunk_clip(name, batch=2)
    grads, buffers = [], []
    for enable in (False, True):
        model = _seeded(name).train()
        model.set_grad_checkpointing(enable)
        calls = collections.Counter()
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.Conv3d):
                m.register_forward_hook(lambda module, args, out, n=n: calls.update([n]))
        model.forward_features(x).square().mean().backward()   # the trunk is what checkpointing changes
        # Recomputation stops once backward has what it needs: a convolution whose input was the block's input
        # (the stem's, on the clip) or whose output nothing saved (the last of a non-local block) is not rerun.
        again = sum(count == 2 for count in calls.values())
        assert calls and max(calls.values()) <= 2 and (again >= 0.75 * len(calls) if enable else again == 0), calls
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        buffers.append(dict(model.named_buffers()))
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters())) - 2  # all but fc
    for key in grads[0]:
        # The recomputation repeats the forward's float operations on the same inputs; 1e-6 only absorbs a
        # different accumulation order of the gradients.
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-6, msg=key)
    # BatchNorm in training mode updates its running statistics once per forward; the recomputation in
    # backward must not update them again (num_batches_tracked 1, not 2; the same running mean and variance)
    for key in buffers[0]:
        torch.testing.assert_close(buffers[1][key], buffers[0][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('name', ENTRIES)
def test_layer_decay_groups_cover_every_parameter_once(name):
    model = zoo.create_model(name, device='meta')
    optimizer = timm.optim.create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    grouped = [id(p) for group in optimizer.param_groups for p in group['params']]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    assert set(grouped) == {id(p) for p in model.parameters()}
    scales = {group['lr_scale'] for group in optimizer.param_groups}
    assert len(scales) > 3 and max(scales) == 1.0  # the head learns fastest, the stem slowest
    # stem, stages (ResNet res2-res5; Inception 3-5) or blocks (16 bottlenecks; 9 Mixed), then the head
    expected = {True: 5, False: 11} if name == 'i3d_inception' else {True: 6, False: 18}
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert len(set(groups.values())) == expected[coarse]


# --- heads, pools, device and dtype --------------------------------------------------------------------------

@pytest.mark.parametrize('name', ENTRIES)
def test_default_cfg_checks_on_the_video_axes(name):
    """timm's test_model_default_cfgs, with the unpooled map (N, C, T, H, W) compared with pool_size."""
    cfg = zoo.get_pretrained_cfg(name)
    x = torch.randn(1, *cfg['input_size'], device='meta')
    model = zoo.create_model(name, device='meta', dtype=torch.float32)
    assert model.in_chans == cfg['input_size'][0]
    features = model.forward_features(x)
    assert features.shape[1:] == (model.num_features, *cfg['pool_size'])
    assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)
    state_dict = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state_dict and f"{cfg['first_conv']}.weight" in state_dict
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)
    model.reset_classifier(0, '')
    assert model(x).shape == (1, model.num_features, *cfg['pool_size'])
    unpooled = zoo.create_model(name, num_classes=0, global_pool='', device='meta')
    assert unpooled(x).shape == (1, model.num_features, *cfg['pool_size'])
    with pytest.raises(TypeError):
        zoo.create_model(name, device='meta', not_a_model_arg=1)


@pytest.mark.parametrize('name', ENTRIES)
def test_device_and_dtype_at_creation_and_reset(name):
    model = zoo.create_model(name, device='meta', dtype=torch.bfloat16)
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    assert all(t.device.type == 'meta' and t.dtype == torch.bfloat16 for t in tensors)
    model.to(dtype=torch.float64).train(False)
    model.reset_classifier(3)
    head = list(model.get_classifier().parameters())
    assert head and all(p.device.type == 'meta' and p.dtype == torch.float64 for p in head)
    assert not any(m.training for m in model.modules())


def test_reset_classifier_honours_the_pool():
    model = _seeded('c2d_r50_8x8', global_pool='max')
    features = torch.randn(2, 2048, 4, 3, 3)
    with torch.no_grad():
        assert torch.equal(model.forward_head(features, pre_logits=True), features.amax(dim=(2, 3, 4)))
        model.reset_classifier(5)                      # None keeps the pool
        assert torch.equal(model.forward_head(features, pre_logits=True), features.amax(dim=(2, 3, 4)))
        model.reset_classifier(5, 'avg')
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.mean(dim=(2, 3, 4)))
        model.reset_classifier(7, 'catavgmax')
        assert model.head_hidden_size == 4096 and model.forward_head(features).shape == (2, 7)
    with pytest.raises(AssertionError):
        GlobalPool3d('median')
    with pytest.raises(AssertionError):
        InceptionI3d(global_pool='max', device='meta')


def test_children_are_registered_in_execution_order():
    model = zoo.create_model('i3d_r50', device='meta')
    assert [n for n, _ in model.named_children()][:10] == ['conv1', 'bn1', 'act1', 'maxpool', 'layer1', 'pool2',
                                                           'layer2', 'layer3', 'layer4', 'global_pool']


@pytest.mark.parametrize('name', ENTRIES)
def test_min_input_size_is_the_smallest_clip_the_network_takes(name):
    _, frames, size, _ = zoo.get_pretrained_cfg(name)['min_input_size']
    model = zoo.create_model(name, device='meta')
    assert model(torch.empty(1, 3, frames, size, size, device='meta')).shape == (1, 400)
    for smaller in ((frames - 1, 256), (frames, size - 1)):
        with pytest.raises((RuntimeError, AssertionError)):
            model(torch.empty(1, 3, smaller[0], smaller[1], smaller[1], device='meta'))


@pytest.mark.parametrize('name', ['i3d_nl_r50_32x4', 'i3d_inception'])
def test_torch_compile_sees_one_graph(name):
    model = zoo.create_model(name)
    _, frames, size, _ = model.pretrained_cfg['min_input_size']
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, frames, size, size))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# --- the grouped non-local models ----------------------------------------------------------------------------

def test_grouped_non_local_block_equals_a_hand_written_reference():
    torch.manual_seed(0)
    block = NonLocalBlock3d(8, norm='none', temporal_group=2).eval()
    torch.nn.init.normal_(block.out.weight, std=0.5)   # created as the identity (zero `out`); make it act
    x = torch.randn(2, 8, 4, 4, 4)
    w = lambda conv: conv.weight.reshape(conv.out_channels, -1)  # noqa: E731
    expected = torch.empty_like(x)
    with torch.no_grad():
        out = block(x)
        for n in range(2):
            for start in (0, 2):                                   # groups of 2 consecutive time steps
                clip = x[n, :, start:start + 2]                    # (C, 2, H, W)
                xs = clip.reshape(8, -1)
                pooled = F.max_pool3d(clip[None], (1, 2, 2), (1, 2, 2))[0].reshape(8, -1)
                theta = w(block.theta) @ xs + block.theta.bias[:, None]
                phi = w(block.phi) @ pooled + block.phi.bias[:, None]
                g = w(block.g) @ pooled + block.g.bias[:, None]
                attention = torch.softmax(theta.T @ phi / math.sqrt(4), dim=1)
                z = w(block.out) @ (g @ attention.T) + block.out.bias[:, None]   # no norm after `out`
                expected[n, :, start:start + 2] = (xs + z).reshape(8, 2, 4, 4)
        whole_clip = NonLocalBlock3d(8, norm='none').eval()
        whole_clip.load_state_dict(block.state_dict())
        ungrouped = whole_clip(x)
    # float32 matmuls in another order than the block's einsums: differences of a few ulp.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ungrouped, atol=1e-3)         # the grouping changes the result


def test_grouped_non_local_block_is_the_identity_when_created():
    block = NonLocalBlock3d(16, norm='none', temporal_group=4).eval()
    x = torch.randn(1, 16, 8, 4, 4)
    assert torch.equal(block(x), x)
    with pytest.raises(AssertionError, match='multiple of the group'):
        block(torch.randn(1, 16, 6, 4, 4))


@pytest.mark.parametrize('name', ['i3d_nl_r50_128x1', 'i3d_nl_r50_32x4'])
def test_grouped_models_group_res3_only_and_have_no_norm_after_out(name):
    model = zoo.create_model(name, device='meta')
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, NonLocalBlock3d)}
    assert sorted(blocks) == ['layer2.1.non_local', 'layer2.3.non_local', 'layer3.1.non_local',
                              'layer3.3.non_local', 'layer3.5.non_local']
    assert {n: b.temporal_group for n, b in blocks.items()} == {
        n: (4 if n.startswith('layer2') else 0) for n in blocks}
    assert all(isinstance(b.bn, torch.nn.Identity) for b in blocks.values())
    assert not any('non_local.bn' in k or 'running' in k for k in model.state_dict())


@pytest.mark.parametrize('name', ['i3d_nl_r50_128x1', 'i3d_nl_r50_32x4'])
def test_grouped_models_parameter_count(name):
    n_params = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    grouped = zoo.create_model(name, device='meta')
    assert n_params(grouped) == 35_340_624
    # = I3D-NL-R50 (35.40 M) without its trainable norms: frozen BN in the backbone, none after `out`.
    nl = zoo.create_model('i3d_nl_r50', device='meta')
    norms = sum(p.numel() for m in nl.modules() if isinstance(m, torch.nn.BatchNorm3d) for p in m.parameters())
    assert n_params(grouped) == n_params(nl) - norms


def test_grouped_models_read_128_and_32_frame_clips():
    assert zoo.get_pretrained_cfg('i3d_nl_r50_128x1')['pool_size'] == (16, 7, 7)   # 4 groups of 4 in res3
    assert zoo.get_pretrained_cfg('i3d_nl_r50_32x4')['pool_size'] == (16, 7, 7)
    assert zoo.create_model('i3d_nl_r50_128x1', device='meta').spec.feature_sizes(128, 224)[2] == (16, 28, 28)
