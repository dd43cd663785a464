"""The Caffe2 blob-name rule table: every family member converts strictly, outputs match, round trips are exact."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from caffe2_checkpoints import caffe2_blob_shapes, model_spec, random_blobs, write_caffe2_checkpoint
from converters.caffe2_mapping import (AMBIGUITY_NOTE, Caffe2MappingError, blobs_to_state_dict,
                                       caffe2_blob_name, checkpoint_traits, matching_models, state_dict_to_blobs,
                                       zoo_key)
from converters.caffe2_pickle import read_caffe2_blobs
from zoo.video_nonlocal_net import caffe2_model_names, caffe2_target_state_dict as target_state_dict

CAFFE2_MODELS = ['c2d_nl_r50', 'c2d_nl_r50_8x8', 'c2d_r50', 'c2d_r50_8x8', 'i3d_nl_r50', 'i3d_nl_r50_128x1',
                 'i3d_nl_r50_32x4', 'i3d_nl_r50_8x8', 'i3d_r50', 'i3d_r50_128x1', 'i3d_r50_32x4', 'i3d_r50_8x8']
# Same weights, different clip layout (see AMBIGUITY_NOTE).
SAME_WEIGHTS = [{'c2d_r50', 'c2d_r50_8x8'}, {'c2d_nl_r50', 'c2d_nl_r50_8x8'}, {'i3d_r50', 'i3d_r50_8x8'},
                {'i3d_nl_r50', 'i3d_nl_r50_8x8'}, {'i3d_r50_128x1', 'i3d_r50_32x4'},
                {'i3d_nl_r50_128x1', 'i3d_nl_r50_32x4'}]


@pytest.fixture(scope='module')
def i3d_blobs():
    return random_blobs(model_spec('i3d_r50_8x8'), seed=3)


@pytest.fixture(scope='module')
def i3d_target():
    return target_state_dict('i3d_r50_8x8')


def test_every_registered_caffe2_model_is_covered():
    assert caffe2_model_names() == CAFFE2_MODELS == sorted(
        n for n in zoo.list_models() if zoo.get_pretrained_cfg(n).source_format == 'caffe2_pickle')


@pytest.mark.parametrize('blob, key', [
    ('conv1_w', 'conv1.weight'),
    ('res_conv1_bn_s', 'bn1.weight'),
    ('res_conv1_bn_riv', 'bn1.running_var'),
    ('res2_0_branch2a_w', 'layer1.0.conv1.weight'),
    ('res3_0_branch2b_bn_rm', 'layer2.0.bn2.running_mean'),
    ('res4_5_branch2c_bn_b', 'layer3.5.bn3.bias'),
    ('res5_0_branch1_w', 'layer4.0.downsample.0.weight'),
    ('res5_0_branch1_bn_s', 'layer4.0.downsample.1.weight'),
    ('nonlocal_conv3_1_theta_w', 'layer2.1.non_local.theta.weight'),
    ('nonlocal_conv4_5_out_b', 'layer3.5.non_local.out.bias'),
    ('nonlocal_conv4_3_bn_riv', 'layer3.3.non_local.bn.running_var'),
    ('pred_w', 'fc.weight'),
    ('pred_b', 'fc.bias'),
])
def test_rule_table_maps_blob_to_key_and_back(blob, key):
    assert zoo_key(blob) == key
    assert caffe2_blob_name(key) == blob


@pytest.mark.parametrize('blob', ['res1_0_branch2a_w', 'res2_0_branch2d_w', 'res2_0_branch2a_bn_x',
                                  'nonlocal_conv3_1_psi_w', 'pred', 'conv1_b', 'res2_01_branch2a_w'])
def test_names_outside_the_table_have_no_key(blob):
    assert zoo_key(blob) is None


@pytest.mark.parametrize('model_name', CAFFE2_MODELS)
def test_every_key_but_the_batch_counter_has_a_blob_that_maps_back(model_name):
    for key in target_state_dict(model_name):
        blob = caffe2_blob_name(key)
        if key.endswith('num_batches_tracked'):
            assert blob is None
        else:
            assert blob is not None and zoo_key(blob) == key, key


@pytest.mark.parametrize('model_name', CAFFE2_MODELS)
def test_python2_checkpoint_of_every_family_member_converts_strictly(tmp_path, model_name):
    path = tmp_path / f'{model_name}.pkl'
    weights = write_caffe2_checkpoint(path, model_name, seed=CAFFE2_MODELS.index(model_name))
    with open(path, 'rb') as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)  # as with the real files, only encoding='latin1' reads it
    target = target_state_dict(model_name)
    conversion = blobs_to_state_dict(read_caffe2_blobs(path), target, source=str(path), target_name=model_name)
    state_dict = conversion.state_dict
    assert list(state_dict) == list(target)
    assert len(conversion.placed) == len(weights)
    for blob, key, shape in conversion.placed:
        assert tuple(state_dict[key].shape) == tuple(target[key].shape) == shape
        assert torch.equal(state_dict[key], torch.from_numpy(weights[blob])), blob
    counters = [k for k in target if k.endswith('num_batches_tracked')]
    assert sorted(conversion.filled) == sorted(counters)
    assert all(state_dict[k].item() == 0 and state_dict[k].dtype == torch.long for k in counters)


def test_running_var_blob_is_the_variance_not_its_inverse(i3d_blobs, i3d_target):
    state_dict = blobs_to_state_dict(i3d_blobs, i3d_target).state_dict
    bn = nn.BatchNorm3d(64, eps=1.0000001e-5).eval()
    bn.load_state_dict({k[len('bn1.'):]: v for k, v in state_dict.items() if k.startswith('bn1.')})
    x = torch.randn(1, 64, 2, 3, 3)
    b = {s: torch.from_numpy(i3d_blobs[f'res_conv1_bn_{s}']).view(1, -1, 1, 1, 1) for s in ('s', 'b', 'rm', 'riv')}
    # Caffe2 SpatialBN at test time: (x - rm) / sqrt(riv + eps) * s + b
    expected = (x - b['rm']) / torch.sqrt(b['riv'] + 1.0000001e-5) * b['s'] + b['b']
    assert torch.allclose(bn(x), expected, rtol=1e-5, atol=1e-6)


def test_missing_blob_is_named_with_the_key_left_empty(i3d_blobs, i3d_target):
    blobs = {k: v for k, v in i3d_blobs.items() if k != 'res4_2_branch2b_bn_riv'}
    with pytest.raises(Caffe2MappingError) as info:
        blobs_to_state_dict(blobs, i3d_target, source='x.pkl', target_name='i3d_r50_8x8')
    assert info.value.empty == ['layer3.2.bn2.running_var (expects blob res4_2_branch2b_bn_riv)']
    assert 'x.pkl does not fit i3d_r50_8x8' in str(info.value)


def test_extra_blob_is_named_as_not_placed(i3d_blobs, i3d_target):
    blobs = dict(i3d_blobs, res6_0_branch2a_w=np.zeros((1, 1, 1, 1, 1), np.float32),
                 nonlocal_conv3_1_theta_w=np.zeros((256, 512, 1, 1, 1), np.float32))
    with pytest.raises(Caffe2MappingError) as info:
        blobs_to_state_dict(blobs, i3d_target)
    assert [u.split()[0] for u in info.value.unplaced] == ['nonlocal_conv3_1_theta_w', 'res6_0_branch2a_w']
    assert 'no rule' in info.value.unplaced[1] and 'not a key' in info.value.unplaced[0]


def test_wrong_shape_is_named_with_both_shapes(i3d_blobs, i3d_target):
    blobs = dict(i3d_blobs, pred_w=np.zeros((2048, 400), np.float32))  # transposed: a conv-style layout
    with pytest.raises(Caffe2MappingError) as info:
        blobs_to_state_dict(blobs, i3d_target)
    assert info.value.mismatched == ['pred_w has shape (2048, 400), fc.weight needs (400, 2048)']
    assert info.value.empty == []  # the key is reported once, as a mismatch


def test_all_failures_are_listed_in_one_error(i3d_blobs, i3d_target):
    blobs = dict(i3d_blobs, extra_blob=np.zeros(3, np.float32), conv1_w=np.zeros((64, 3, 1, 7, 7), np.float32))
    del blobs['pred_b']
    with pytest.raises(Caffe2MappingError) as info:
        blobs_to_state_dict(blobs, i3d_target)
    message = str(info.value)
    assert '1 blob(s) not placed, 1 key(s) left empty, 1 shape/dtype mismatch(es)' in message.splitlines()[0]
    assert 'extra_blob' in message and 'fc.bias (expects blob pred_b)' in message and 'conv1_w has shape' in message


def test_frozen_bn_model_refuses_running_statistics(i3d_blobs):
    with pytest.raises(Caffe2MappingError) as info:
        blobs_to_state_dict(i3d_blobs, target_state_dict('i3d_r50_32x4'))
    assert len(info.value.unplaced) == sum(b.endswith(('_rm', '_riv')) for b in i3d_blobs)
    assert info.value.empty == [] and info.value.mismatched == []


@pytest.mark.parametrize('model_name, family, nonlocal_blocks, frozen', [
    ('c2d_r50', 'C2D', 0, False), ('c2d_nl_r50_8x8', 'C2D', 5, False), ('i3d_r50', 'I3D', 0, False),
    ('i3d_nl_r50', 'I3D', 5, False), ('i3d_r50_128x1', 'I3D', 0, True), ('i3d_nl_r50_32x4', 'I3D', 5, True)])
def test_traits_are_read_from_blob_names_and_conv1_shape(model_name, family, nonlocal_blocks, frozen):
    traits = checkpoint_traits(caffe2_blob_shapes(model_spec(model_name)))
    assert (traits.family, traits.nonlocal_blocks, traits.frozen_bn) == (family, nonlocal_blocks, frozen)


@pytest.mark.parametrize('model_name', CAFFE2_MODELS)
def test_inference_names_both_clip_layouts_because_weights_cannot_tell_them_apart(model_name):
    expected = next(group for group in SAME_WEIGHTS if model_name in group)
    targets = {name: target_state_dict(name) for name in CAFFE2_MODELS}
    assert matching_models(caffe2_blob_shapes(model_spec(model_name)), targets) == sorted(expected)
    assert '32x2 vs 8x8' in AMBIGUITY_NOTE and 'cannot be inferred' in AMBIGUITY_NOTE


def test_reverse_mapping_round_trips_bit_exactly(i3d_blobs, i3d_target):
    state_dict = blobs_to_state_dict(i3d_blobs, i3d_target).state_dict
    back = state_dict_to_blobs(state_dict)
    assert sorted(back) == sorted(i3d_blobs)
    for name, array in i3d_blobs.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes(), name
    again = blobs_to_state_dict(back, i3d_target).state_dict
    assert all(torch.equal(again[k], state_dict[k]) for k in state_dict)


def test_reverse_mapping_refuses_keys_it_cannot_name():
    with pytest.raises(Caffe2MappingError, match='head.proj.weight'):
        state_dict_to_blobs({'conv1.weight': torch.zeros(1), 'head.proj.weight': torch.zeros(1)})


# ---- outputs: converted model == model whose tensors were set directly from the arrays

def _set_directly(model: zoo.ResNet3D, blobs) -> None:
    """Assign each Caffe2 array to its module by walking the network, independently of the rule table."""
    def put(tensor, name):
        tensor.copy_(torch.from_numpy(blobs[name]))

    def norm(module, prefix):
        put(module.weight, f'{prefix}_s')
        put(module.bias, f'{prefix}_b')
        if isinstance(module, nn.BatchNorm3d):
            put(module.running_mean, f'{prefix}_rm')
            put(module.running_var, f'{prefix}_riv')

    with torch.no_grad():
        put(model.conv1.weight, 'conv1_w')
        norm(model.bn1, 'res_conv1_bn')
        for stage_number, stage in enumerate(model.stages, start=2):
            for i, block in enumerate(stage):
                prefix = f'res{stage_number}_{i}'
                for conv, bn, branch in ((block.conv1, block.bn1, 'a'), (block.conv2, block.bn2, 'b'),
                                         (block.conv3, block.bn3, 'c')):
                    put(conv.weight, f'{prefix}_branch2{branch}_w')
                    norm(bn, f'{prefix}_branch2{branch}_bn')
                if block.downsample is not None:
                    put(block.downsample[0].weight, f'{prefix}_branch1_w')
                    norm(block.downsample[1], f'{prefix}_branch1_bn')
                if block.non_local is not None:
                    nl = f'nonlocal_conv{stage_number}_{i}'
                    for part in ('theta', 'phi', 'g', 'out'):
                        put(getattr(block.non_local, part).weight, f'{nl}_{part}_w')
                        put(getattr(block.non_local, part).bias, f'{nl}_{part}_b')
                    if not isinstance(block.non_local.bn, nn.Identity):
                        norm(block.non_local.bn, f'{nl}_bn')
        put(model.fc.weight, 'pred_w')
        put(model.fc.bias, 'pred_b')


@pytest.mark.parametrize('model_name', ['i3d_nl_r50_8x8', 'i3d_r50_32x4', 'c2d_r50_8x8', 'i3d_nl_r50_32x4'])
def test_converted_model_output_equals_directly_set_model(model_name):
    torch.manual_seed(0)
    blobs = random_blobs(model_spec(model_name), seed=7)
    converted = zoo.create_model(model_name)
    converted.load_state_dict(blobs_to_state_dict(blobs, converted.state_dict()).state_dict, strict=True)
    direct = zoo.create_model(model_name)
    _set_directly(direct, blobs)
    fresh = zoo.create_model(model_name)
    clip = torch.randn(1, 3, 8, 32, 32) * 57.375  # small: res5 is 1x1, the test is about weights
    with torch.no_grad():
        out_converted, out_direct, out_fresh = converted(clip), direct(clip), fresh(clip)
    assert torch.isfinite(out_converted).all()
    assert torch.allclose(out_converted, out_direct, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_converted, out_fresh, rtol=1e-3, atol=1e-4)  # the weights did change it
