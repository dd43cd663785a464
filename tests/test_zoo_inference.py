"""The inference fast path computes the same function as the model it was prepared from.

Every network and input here is seeded. Tolerances follow from the arithmetic being checked:

* float32 (unit roundoff 2^-24 ~ 6e-8): folding a norm into a conv rounds the folded weights once more
  and changes the order of the sums, in each of the ~50 layers of a ResNet-50; every norm then subtracts
  a channel mean that can be several times the channel's spread, cancelling leading digits of both
  versions differently. Measured: 4e-7..4e-6 (largest on res5 maps), the same with oneDNN on AVX-512 and
  held to AVX2. 1e-5 leaves a margin for convolutions summing in yet another order on other CPUs, and
  is still 400x below what a single bf16 rounding (2^-8) costs, so a head or layer left in reduced
  precision, or a fold that drops a term, cannot pass.
* bf16 (8 significant bits, unit roundoff 2^-8 ~ 3.9e-3): see ``BF16_LOGIT_TOLERANCE``.

The networks get realistic statistics (``with_realistic_statistics``): a randomly initialised ResNet
with unit-scale residual branches is chaotic, amplifying any perturbation about 3x per stage (a bf16
rounding in res2 grows to 35% of the logits by res5), so comparing its outputs would test that chaos,
not the fast path.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.inference import fold_batchnorm, prepare_for_inference

FLOAT32_TOLERANCE = 1e-5

# c2d_r50's longest path runs through 49 convolutions in bf16 (the stem and 16 bottlenecks of 3); each
# rounds its input activations and weights to 8 significant bits and accumulates in float32. Independent
# roundings of relative size 2^-8 add like a random walk over the depth: sqrt(49) * 2^-8 = 2.7% of the
# logit vector (measured: 1.2%..1.6% with oneDNN on AVX-512 with and without bf16 units, and on AVX2).
# A run-away error (a layer left in the wrong precision, a badly rounded fold) breaks the bound; the
# linear worst case 49 * 2^-8 = 19% is not a bound any real run comes near.
BF16_UNIT_ROUNDOFF = 2.0 ** -8
C2D_R50_DEPTH = 49
BF16_LOGIT_TOLERANCE = math.sqrt(C2D_R50_DEPTH) * BF16_UNIT_ROUNDOFF


def seeded_clips(n, seed, frames=8, size=64):
    """``n`` normalised clips (about zero mean, unit variance) that differ in content: smooth random fields
    (coarse noise, trilinearly upsampled) plus a little pixel noise, so clips give different predictions."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 2, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(frames, size, size), mode='trilinear', align_corners=False)
    return smooth + 0.3 * torch.randn(n, 3, frames, size, size, generator=generator)


def _ends_a_residual_branch(name):
    # the norm whose output is added back onto the identity path: bottleneck bn3, non-local block bn
    return name.endswith('.bn3') or ('non_local' in name and name.endswith('.bn'))


@torch.no_grad()
def with_realistic_statistics(model, seed=0):
    """``model`` made to behave like a trained network, in place: every norm (BatchNorm or frozen
    AffineChannel) gets a random scale and shift and its statistics measured on seeded clips, so each
    layer's output has a trained network's scale and the folded statistics are far from the trivial 0/1.

    The norm ending each residual branch gets a small scale (0.1..0.3), as in trained ResNets (and as
    the zero-gamma initialisation of Goyal et al. 2017 starts it): the identity path dominates, and
    perturbations pass through the network without being amplified. The classifier gets weights of
    std 0.05, so logits spread over a few units like a trained network's.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    def calibrate(name):
        def hook(norm, inputs):
            # runs in forward order, so each norm sees the calibrated output of the layers before it
            x = inputs[0]
            mean, var = x.mean(dim=(0, 2, 3, 4)), x.var(dim=(0, 2, 3, 4), unbiased=False)
            gamma = uniform(mean.shape, 0.1, 0.3) if _ends_a_residual_branch(name) else uniform(mean.shape, 0.5, 1.5)
            beta = uniform(mean.shape, -0.1, 0.1)
            if isinstance(norm, zoo.AffineChannel3d):
                scale = gamma * torch.rsqrt(var + 1e-5)
                norm.weight.copy_(scale)
                norm.bias.copy_(beta - mean * scale)
            else:
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.weight.copy_(gamma)
                norm.bias.copy_(beta)
        return hook

    model.eval()
    hooks = [m.register_forward_pre_hook(calibrate(name)) for name, m in model.named_modules()
             if isinstance(m, (torch.nn.BatchNorm3d, zoo.AffineChannel3d))]
    try:
        model(seeded_clips(4, seed=seed + 1000))
    finally:
        for h in hooks:
            h.remove()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.05, generator=generator)
    return model


def realistic_model(name, seed=0, **kwargs):
    torch.manual_seed(seed)  # the architecture's own initialisation draws from the global generator
    return with_realistic_statistics(zoo.create_model(name, **kwargs), seed=seed)


def relative_error(a, b):
    """Largest absolute difference over the largest reference magnitude, over the whole tensor."""
    return ((a - b).abs().max() / b.abs().max()).item()


def logit_relative_errors(out, ref):
    """Per clip: the largest logit difference relative to the clip's largest reference logit."""
    return (out - ref).abs().amax(dim=1) / ref.abs().amax(dim=1)


@pytest.fixture(scope='module')
def realistic_c2d():
    return realistic_model('c2d_r50_8x8')


@pytest.mark.parametrize('name', ['i3d_r50_8x8', 'i3d_nl_r50_8x8', 'i3d_r50_32x4'])
def test_folded_network_matches_the_original_in_float32(name):
    model = realistic_model(name)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm3d, zoo.AffineChannel3d)) for m in folded.modules())
    x = seeded_clips(1, seed=1, size=96)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < FLOAT32_TOLERANCE
        assert relative_error(folded.forward_features(x), model.forward_features(x)) < FLOAT32_TOLERANCE


def test_prepare_for_inference_leaves_the_original_untouched():
    model = realistic_model('c2d_r50_8x8')
    before = copy.deepcopy(model.state_dict())
    prepare_for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_fp32_fast_path_matches_eager_logits_and_fully_conv_scores():
    model = realistic_model('i3d_r50_8x8')
    fast = prepare_for_inference(model)
    x = seeded_clips(2, seed=1, size=128)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < FLOAT32_TOLERANCE
        # log-probabilities: the Caffe2 test head's output; their relative error is that of the scores
        assert relative_error(fast(x, fully_conv=True), model(x, fully_conv=True)) < FLOAT32_TOLERANCE
    assert fast.pretrained_cfg == model.pretrained_cfg


def test_bf16_fast_path_keeps_the_logits_and_the_top1_of_float32(realistic_c2d):
    fast = prepare_for_inference(realistic_c2d, precision='bf16')
    x = seeded_clips(8, seed=2)
    with torch.no_grad():
        out, ref = fast(x), realistic_c2d(x)
    assert out.dtype == torch.float32
    errors = logit_relative_errors(out, ref)
    assert errors.max() < BF16_LOGIT_TOLERANCE, errors
    # Within the bound, a clip's top-1 can only change if its two best fp32 logits are closer than twice
    # the largest allowed logit error; every clip with a wider margin must keep its class.
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_LOGIT_TOLERANCE * ref.abs().amax(dim=1)
    assert clear.sum() >= len(x) // 2, 'the seeded clips are near-ties: top-1 agreement would check nothing'
    assert torch.equal(out.argmax(dim=1)[clear], ref.argmax(dim=1)[clear])


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match='precision must be one of'):
        prepare_for_inference(zoo.create_model('c2d_r50_8x8'), precision='int3')


def test_reduced_precision_keeps_the_head_in_float32(realistic_c2d):
    fast = prepare_for_inference(realistic_c2d, precision='bf16')
    body = fast.net
    assert body.net.conv1.weight.dtype == torch.bfloat16
    assert body.net.fc.weight.dtype == torch.float32
    # its values too: float32 in name only, with weights rounded through bf16, would cost 2^-8 per weight
    assert torch.equal(body.net.fc.weight, realistic_c2d.fc.weight)
    assert torch.equal(body.net.fc.bias, realistic_c2d.fc.bias)
    x = seeded_clips(2, seed=3)
    with torch.no_grad():
        scores = fast(x, fully_conv=True)
        features = body.net.forward_features(x.contiguous(memory_format=torch.channels_last_3d).bfloat16())
        float32_head = realistic_c2d.forward_head(features.float(), fully_conv=True)
    # The same bf16 features through the original float32 head give the same Caffe2 test scores up to
    # float32 rounding; a head run in bf16 would round its inputs and weights to 2^-8, 400x the tolerance.
    assert features.dtype == torch.bfloat16
    assert relative_error(scores, float32_head) < FLOAT32_TOLERANCE


def test_compiled_fast_path_matches_eager():
    model = realistic_model('c2d_r50_8x8')
    fast = prepare_for_inference(model, compile=True)
    x = seeded_clips(1, seed=4)
    with torch.no_grad():
        # inductor fuses conv + bias + ReLU and may reorder sums further: float32 rounding all the same
        assert relative_error(fast(x), model(x)) < FLOAT32_TOLERANCE


def test_folding_inception_i3d_keeps_its_tf_same_padding():
    torch.manual_seed(0)
    model = zoo.create_model('i3d_inception')
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if hasattr(m, 'running_var'):
            m.running_mean.uniform_(-0.1, 0.1, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.uniform_(-0.1, 0.1, generator=generator)
    folded = fold_batchnorm(model)
    assert type(folded.Conv3d_1a_7x7.conv) is type(model.Conv3d_1a_7x7.conv)
    assert isinstance(folded.Conv3d_1a_7x7.bn, torch.nn.Identity)
    x = seeded_clips(1, seed=5, frames=10, size=224)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < FLOAT32_TOLERANCE
