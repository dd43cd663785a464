"""The inference fast path computes the same function as the model it was prepared from."""
import copy

import pytest
import torch

import zoo
from zoo.inference import fold_batchnorm, prepare_for_inference


def with_random_statistics(model, seed=0):
    """BN with non-trivial statistics and scales, so that folding has something to get wrong."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name in ('running_mean', 'bias'):
            t = getattr(m, name, None)
            if isinstance(m, (torch.nn.BatchNorm3d, zoo.AffineChannel3d)) and t is not None:
                t.data.copy_(torch.rand(t.shape, generator=generator) * 0.2 - 0.1)
        for name in ('running_var', 'weight'):
            t = getattr(m, name, None)
            if isinstance(m, (torch.nn.BatchNorm3d, zoo.AffineChannel3d)) and t is not None:
                t.data.copy_(torch.rand(t.shape, generator=generator) + 0.5)
    return model


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('name', ['i3d_r50_8x8', 'i3d_nl_r50_8x8', 'i3d_r50_32x4'])
def test_folded_network_matches_the_original_in_float32(name):
    model = with_random_statistics(zoo.create_model(name))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm3d, zoo.AffineChannel3d)) for m in folded.modules())
    x = torch.randn(1, 3, 8, 96, 96)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < 1e-5
        assert relative_error(folded.forward_features(x), model.forward_features(x)) < 1e-5


def test_prepare_for_inference_leaves_the_original_untouched():
    model = with_random_statistics(zoo.create_model('c2d_r50_8x8'))
    before = copy.deepcopy(model.state_dict())
    prepare_for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_fp32_fast_path_matches_eager_logits_and_fully_conv_scores():
    torch.manual_seed(0)
    model = with_random_statistics(zoo.create_model('i3d_r50_8x8'))
    fast = prepare_for_inference(model)
    x = torch.randn(2, 3, 8, 128, 128)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < 1e-5
        # compared as log-probabilities: this random network is so confident that the probabilities of
        # all but one class underflow, and the top one's relative error is that of its log-probability
        assert relative_error(fast(x, fully_conv=True), model(x, fully_conv=True)) < 1e-5
    assert fast.pretrained_cfg == model.pretrained_cfg


def test_bf16_fast_path_stays_close_and_returns_float32():
    model = with_random_statistics(zoo.create_model('c2d_r50_8x8'))
    fast = prepare_for_inference(model, precision='bf16')
    x = torch.randn(2, 3, 8, 96, 96)
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.dtype == torch.float32
    assert relative_error(out, ref) < 5e-2


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match='precision must be one of'):
        prepare_for_inference(zoo.create_model('c2d_r50_8x8'), precision='int3')


def test_reduced_precision_keeps_the_head_in_float32():
    model = with_random_statistics(zoo.create_model('c2d_r50_8x8'))
    fast = prepare_for_inference(model, precision='bf16')
    body = fast.net
    assert body.net.conv1.weight.dtype == torch.bfloat16
    assert body.net.fc.weight.dtype == torch.float32
    x = torch.randn(1, 3, 8, 96, 96)
    with torch.no_grad():
        assert relative_error(fast(x, fully_conv=True).exp(), model(x, fully_conv=True).exp()) < 5e-2


def test_compiled_fast_path_matches_eager():
    model = with_random_statistics(zoo.create_model('c2d_r50_8x8'))
    fast = prepare_for_inference(model, compile=True)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < 1e-4


def test_folding_inception_i3d_keeps_its_tf_same_padding():
    torch.manual_seed(0)
    model = zoo.create_model('i3d_inception')
    for m in model.modules():
        if hasattr(m, 'running_var'):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    folded = fold_batchnorm(model)
    assert type(folded.Conv3d_1a_7x7.conv) is type(model.Conv3d_1a_7x7.conv)
    assert isinstance(folded.Conv3d_1a_7x7.bn, torch.nn.Identity)
    x = torch.randn(1, 3, 10, 224, 224)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < 1e-5
