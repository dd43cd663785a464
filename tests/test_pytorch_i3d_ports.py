"""The converters of the PyTorch I3D ports (piergiaj/pytorch-i3d, hassony2/kinetics_i3d_pytorch = video_features'
i3d_rgb.pt) into i3d_inception, on synthetic state dicts with the ports' exact key names and shapes (written here
from the layouts in shared/reference/i3d-ports.md, values random), and the converted network against a
hand-written forward pass of each port over the port's own state dict."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from converters.pytorch_i3d import PortMappingError, convert_state_dict

# DeepMind's i3d.py: (name, in channels, (b0, b1a, b1b, b2a, b2b, b3b) out channels)
MIXED = [('3b', 192, (64, 96, 128, 16, 32, 32)), ('3c', 256, (128, 128, 192, 32, 96, 64)),
         ('4b', 480, (192, 96, 208, 16, 48, 64)), ('4c', 512, (160, 112, 224, 24, 64, 64)),
         ('4d', 512, (128, 128, 256, 24, 64, 64)), ('4e', 512, (112, 144, 288, 32, 64, 64)),
         ('4f', 528, (256, 160, 320, 32, 128, 128)), ('5b', 832, (256, 160, 320, 32, 128, 128)),
         ('5c', 832, (384, 192, 384, 48, 128, 128))]
PIERGIAJ = dict(stem=('Conv3d_1a_7x7', 'Conv3d_2b_1x1', 'Conv3d_2c_3x3'), mixed='Mixed_{}',
                branches=('b0', 'b1a', 'b1b', 'b2a', 'b2b', 'b3b'), conv='conv3d', bn='bn', logits='logits.conv3d')
HASSONY2 = dict(stem=('conv3d_1a_7x7', 'conv3d_2b_1x1', 'conv3d_2c_3x3'), mixed='mixed_{}',
                branches=('branch_0', 'branch_1.0', 'branch_1.1', 'branch_2.0', 'branch_2.1', 'branch_3.1'),
                conv='conv3d', bn='batch3d', logits='conv3d_0c_1x1.conv3d')
LAYOUTS = {'piergiaj': PIERGIAJ, 'hassony2': HASSONY2}


def port_units(layout):
    """[(port module name, out, in, kernel)] in the order the network runs."""
    stem, units = layout['stem'], []
    units += [(stem[0], 64, 3, 7), (stem[1], 64, 64, 1), (stem[2], 192, 64, 3)]
    for name, cin, (c0, c1a, c1b, c2a, c2b, c3) in MIXED:
        block, b = layout['mixed'].format(name), layout['branches']
        units += [(f'{block}.{b[0]}', c0, cin, 1), (f'{block}.{b[1]}', c1a, cin, 1), (f'{block}.{b[2]}', c1b, c1a, 3),
                  (f'{block}.{b[3]}', c2a, cin, 1), (f'{block}.{b[4]}', c2b, c2a, 3), (f'{block}.{b[5]}', c3, cin, 1)]
    return units


def port_state_dict(layout_name, num_classes=400, counters=True, seed=0):
    """A port's state dict: its keys and shapes, random values that keep activations O(1) through the net."""
    g = torch.Generator().manual_seed(seed)
    layout, sd = LAYOUTS[layout_name], {}
    for name, cout, cin, k in port_units(layout):
        kernel = (k, k, k)
        fan_in = cin * k ** 3
        sd[f'{name}.{layout["conv"]}.weight'] = torch.randn(cout, cin, *kernel, generator=g) * math.sqrt(2 / fan_in)
        bn = f'{name}.{layout["bn"]}'
        sd[f'{bn}.weight'] = 0.5 + torch.rand(cout, generator=g)                # trained scales, not 1
        sd[f'{bn}.bias'] = 0.1 * torch.randn(cout, generator=g)
        sd[f'{bn}.running_mean'] = 0.1 * torch.randn(cout, generator=g)
        sd[f'{bn}.running_var'] = 1e-3 + torch.rand(cout, generator=g)        # small ones: eps matters
        if counters:
            sd[f'{bn}.num_batches_tracked'] = torch.tensor(1000)
    sd[f'{layout["logits"]}.weight'] = torch.randn(num_classes, 1024, 1, 1, 1, generator=g) / 32
    sd[f'{layout["logits"]}.bias'] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def target(tag, num_classes=400):
    return {k: v.shape for k, v in zoo.create_model(f'i3d_inception.{tag}', num_classes=num_classes).state_dict().items()}


def test_synthetic_state_dicts_have_the_documented_size():
    for layout in LAYOUTS:
        sd = port_state_dict(layout)
        assert len(sd) == 344
        values = sum(v.numel() for k, v in sd.items() if not k.endswith('num_batches_tracked'))
        assert round(values / 1e6, 2) == 12.71          # parameters and running statistics


@pytest.mark.parametrize('layout,tag', [('piergiaj', 'imagenet_rgb_piergiaj'), ('hassony2', 'video_features')])
def test_every_port_tensor_is_placed_exactly_once(layout, tag):
    source = port_state_dict(layout)
    converted = convert_state_dict(source, target(tag), layout)
    assert len(converted) == 287                    # 57 units x (conv + 4 BN) + logits weight and bias
    # the random values are all distinct: each model tensor is equal to exactly one port tensor
    placed = {}
    for key, value in converted.items():
        matches = [k for k, v in source.items() if v.shape == value.shape and torch.equal(v, value)]
        assert len(matches) == 1, key
        placed[matches[0]] = key
    assert set(placed) == {k for k in source if not k.endswith('num_batches_tracked')}


@pytest.mark.parametrize('layout,port,ours', [
    ('piergiaj', 'Mixed_4b.b1b.bn.running_var', 'Mixed_4b.Branch_1.Conv3d_0b_3x3.bn.running_var'),
    ('piergiaj', 'Mixed_5c.b3b.conv3d.weight', 'Mixed_5c.Branch_3.Conv3d_0b_1x1.conv.weight'),
    ('piergiaj', 'logits.conv3d.bias', 'logits.bias'),
    ('hassony2', 'mixed_4b.branch_1.1.batch3d.running_var', 'Mixed_4b.Branch_1.Conv3d_0b_3x3.bn.running_var'),
    ('hassony2', 'mixed_3b.branch_3.1.batch3d.weight', 'Mixed_3b.Branch_3.Conv3d_0b_1x1.bn.weight'),
    ('hassony2', 'conv3d_0c_1x1.conv3d.weight', 'logits.weight'),
    ('hassony2', 'conv3d_1a_7x7.conv3d.weight', 'Conv3d_1a_7x7.conv.weight'),
])
def test_documented_names_map_to_our_scopes(layout, port, ours):
    source = port_state_dict(layout)
    assert torch.equal(convert_state_dict(source, target('video_features'), layout)[ours], source[port])


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_a_missing_tensor_is_named(layout):
    source = port_state_dict(layout)
    gone = f'{LAYOUTS[layout]["mixed"].format("4d")}.{LAYOUTS[layout]["branches"][4]}.{LAYOUTS[layout]["bn"]}.bias'
    del source[gone]
    with pytest.raises(PortMappingError, match=f'no tensor {gone} for Mixed_4d.Branch_2.Conv3d_0b_3x3.bn.bias'):
        convert_state_dict(source, target('video_features'), layout)


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_an_extra_tensor_is_named(layout):
    source = port_state_dict(layout)
    source['Mixed_6a.b0.conv3d.weight'] = torch.zeros(2, 2, 1, 1, 1)
    with pytest.raises(PortMappingError, match=r'tensor Mixed_6a.b0.conv3d.weight \(2, 2, 1, 1, 1\) is used by no'):
        convert_state_dict(source, target('video_features'), layout)


def test_a_wrong_shape_is_named():
    source = port_state_dict('piergiaj', num_classes=157)
    with pytest.raises(PortMappingError, match=r'logits.conv3d.weight \(157, 1024, 1, 1, 1\): model logits.weight'):
        convert_state_dict(source, target('imagenet_rgb_piergiaj'), 'piergiaj')


def test_files_without_batch_counters_convert():
    """PyTorch < 0.4.1 saved no num_batches_tracked; nothing reads them in eval."""
    source = port_state_dict('hassony2', counters=False)
    assert len(convert_state_dict(source, target('video_features'), 'hassony2')) == 287


# ----------------------------------------------------------------------------------- the ports' forward pass

def tf_pad(size, k, s):
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return total // 2, total - total // 2


def fixed_pad(size, k, s):
    """video_features' i3d_net.py: from kernel and stride only."""
    total = max(k - s, 0)
    return total // 2, total - total // 2


def pads(x, kernel, stride, rule):
    out = []
    for axis in (4, 3, 2):
        out += rule(x.shape[axis], kernel[axis - 2], stride[axis - 2])
    return out


def port_forward(sd, layout, x, eps, rule):
    """The port's network written from its description: unit = pad, conv, BatchNorm(eps), ReLU; max pools pad
    with zeros (ceil_mode); Mixed = four branches; head = AvgPool (2, 7, 7) stride 1, the 1x1x1 conv, mean
    over time. Returns (logits, the 1024-d pooled feature video_features stores)."""
    strides = {'1a': 2}

    def unit(name, x, k):
        s = (strides.get(name.split('_')[1], 1),) * 3 if name in layout['stem'] else (1, 1, 1)
        x = F.pad(x, pads(x, (k,) * 3, s, rule))
        x = F.conv3d(x, sd[f'{name}.{layout["conv"]}.weight'], stride=s)
        bn = f'{name}.{layout["bn"]}'
        x = F.batch_norm(x, sd[f'{bn}.running_mean'], sd[f'{bn}.running_var'], sd[f'{bn}.weight'],
                         sd[f'{bn}.bias'], False, 0.0, eps)
        return F.relu(x)

    def pool(x, k, s):
        return F.max_pool3d(F.pad(x, pads(x, k, s, rule)), k, s, ceil_mode=True)

    stem = layout['stem']
    x = unit(stem[0], x, 7)
    x = unit(stem[2], unit(stem[1], pool(x, (1, 3, 3), (1, 2, 2)), 1), 3)
    x = pool(x, (1, 3, 3), (1, 2, 2))
    for name, _, _ in MIXED:
        if name == '4b':
            x = pool(x, (3, 3, 3), (2, 2, 2))
        if name == '5b':
            x = pool(x, (2, 2, 2), (2, 2, 2))
        block, b = layout['mixed'].format(name), [f'{layout["mixed"].format(name)}.{n}' for n in layout['branches']]
        x = torch.cat([unit(b[0], x, 1), unit(b[2], unit(b[1], x, 1), 3), unit(b[4], unit(b[3], x, 1), 3),
                       unit(b[5], pool(x, (3, 3, 3), (1, 1, 1)), 1)], dim=1)
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    logits = F.conv3d(x, sd[f'{layout["logits"]}.weight'], sd[f'{layout["logits"]}.bias'])
    return logits.squeeze(3).squeeze(3).mean(2), x.squeeze(3).squeeze(3).mean(2)


@pytest.fixture(scope='module')
def clip():
    return torch.rand(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1


def converted_model(tmp_path, layout, tag, num_classes=400):
    source = port_state_dict(layout, num_classes=num_classes)
    path = tmp_path / f'{tag}.pt'
    torch.save(source, path)
    net = zoo.create_model(f'i3d_inception.{tag}', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return net, source


@pytest.mark.parametrize('layout,tag,eps,rule', [
    ('piergiaj', 'imagenet_rgb_piergiaj', 1e-3, tf_pad),
    ('hassony2', 'video_features', 1e-5, fixed_pad),
])
def test_converted_model_computes_the_ports_network(tmp_path, clip, layout, tag, eps, rule):
    """16 frames of 224x224: sizes divide every stride, where the ports' paddings (TF's per-size rule; the
    fixed one of video_features) and ours agree."""
    net, source = converted_model(tmp_path, layout, tag)
    want_logits, want_feature = port_forward(source, LAYOUTS[layout], clip, eps, rule)
    with torch.no_grad():
        features = net.forward_features(clip)
        got_feature = net.forward_head(features, pre_logits=True)
        got_logits = net.forward_head(features)
    torch.testing.assert_close(got_feature, want_feature, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-5)


def test_video_features_eps_is_not_deepminds(tmp_path, clip):
    """The same file under imagenet_rgb_hassony2 (eps 1e-3) gives other numbers than video_features' 1e-5."""
    net, source = converted_model(tmp_path, 'hassony2', 'imagenet_rgb_hassony2')
    with torch.no_grad():
        got = net.forward_head(net.forward_features(clip), pre_logits=True)
    tf_eps, _ = port_forward(source, HASSONY2, clip, 1e-3, fixed_pad)[1], None
    vf_eps = port_forward(source, HASSONY2, clip, 1e-5, fixed_pad)[1]
    torch.testing.assert_close(got, tf_eps, rtol=1e-4, atol=1e-5)
    assert (got - vf_eps).abs().max() > 1e-3


def test_charades_head_has_157_classes_and_trained_bn_scales(tmp_path):
    net, source = converted_model(tmp_path, 'piergiaj', 'charades_piergiaj', num_classes=157)
    assert net.logits.weight.shape == (157, 1024, 1, 1, 1)
    assert torch.equal(net.Mixed_5c.Branch_1.Conv3d_0b_3x3.bn.weight, source['Mixed_5c.b1b.bn.weight'])
    assert not torch.all(net.Conv3d_1a_7x7.bn.weight == 1)


def test_a_file_of_the_other_port_is_refused_naming_the_right_entry(tmp_path):
    path = tmp_path / 'rgb_imagenet.pt'
    torch.save(port_state_dict('piergiaj'), path)
    with pytest.raises(PortMappingError, match='expects a hassony2 state dict, the file holds a piergiaj state dict'):
        zoo.create_model('i3d_inception.video_features', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_without_a_file_the_error_says_where_to_get_it():
    with pytest.raises(FileNotFoundError, match='pretrained_cfg_overlay=dict.file=PATH.*--weights-file'):
        zoo.create_model('i3d_inception.imagenet_rgb_piergiaj', pretrained=True)


def test_a_converted_zoo_file_loads_under_the_port_entry(tmp_path):
    net, _ = converted_model(tmp_path, 'hassony2', 'video_features')
    path = tmp_path / 'converted.pth'
    torch.save(net.state_dict(), path)
    again = zoo.create_model('i3d_inception.video_features', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in net.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_the_features_job_loads_a_port_entry_from_weights_file(tmp_path):
    """--model i3d_inception.video_features --weights-file i3d_rgb.pt: video_features' network from the user's
    file; the record says the file could not be matched to a published hash (none is pinned)."""
    import json
    from eval.data.synthetic import write_synthetic_video
    from eval.features.job import main
    weights = tmp_path / 'i3d_rgb.pt'
    torch.save(port_state_dict('hassony2'), weights)
    video = tmp_path / 'v.mp4'
    write_synthetic_video(str(video), num_frames=17, height=224, width=256, seed=3)
    out = tmp_path / 'out'
    code = main(['--model', 'i3d_inception.video_features', '--weights-file', str(weights), '--data', str(video),
                 '--out', str(out), '--preset', 'i3d-inception', '--snippet', '16', '--stride', '16',
                 '--workers', '0', '--no-progress'])
    assert code == 0
    sidecar = json.load(open(out / 'v_rgb.json'))
    record = sidecar['model']['weights']
    assert sidecar['model']['name'] == 'i3d_inception.video_features' and record['source'] == str(weights)
    assert not record['published_checkpoint'] and 'no sha256 is pinned for i3d_inception.video_features' in record['note']
