"""Inference fast path: BatchNorm folded into convolutions, channels_last_3d, inference mode, optional
reduced precision and torch.compile, applied to a copy so the original model stays trainable."""
from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
from torch import nn

from .resnet3d import AffineChannel3d

PRECISIONS = ('fp32', 'bf16', 'fp16')
_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def _is_foldable_norm(module: nn.Module) -> bool:
    """BatchNorm of any flavour in eval semantics (running statistics; scale and shift optional), or
    Caffe2's frozen AffineChannel."""
    if isinstance(module, AffineChannel3d):
        return True
    return all(isinstance(getattr(module, name, None), torch.Tensor) for name in ('running_mean', 'running_var')) \
        and hasattr(module, 'eps')


def _norm_scale_shift(norm: nn.Module):
    """Per-channel (scale, shift) with norm(x) == x * scale + shift in eval mode."""
    if isinstance(norm, AffineChannel3d):
        return norm.weight.double(), norm.bias.double()
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if getattr(norm, 'weight', None) is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if getattr(norm, 'bias', None) is not None:
        shift = shift + norm.bias.double()
    return scale, shift


def fold_norm_into_conv(conv: nn.Conv3d, norm: nn.Module) -> nn.Conv3d:
    """A copy of ``conv`` (same class, so e.g. TF-SAME padding is kept) computing norm(conv(x)) in eval
    mode; the fold is done in float64 to keep it exact."""
    scale, shift = _norm_scale_shift(norm)
    fused = copy.deepcopy(conv)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused


# (conv, norm) attribute pairs: ResNet3D blocks and stem, non-local blocks, Inception-I3D's Unit3D.
_PAIRS = (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3'), ('out', 'bn'), ('conv', 'bn'))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every norm that directly follows a conv folded into it (eval semantics)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for conv_name, norm_name in _PAIRS:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, nn.Conv3d) and norm is not None and _is_foldable_norm(norm):
                setattr(module, conv_name, fold_norm_into_conv(conv, norm))
                setattr(module, norm_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv3d) and _is_foldable_norm(module[i + 1]):
                    module[i] = fold_norm_into_conv(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return model


class ReducedPrecisionBody(nn.Module):
    """Runs the backbone with weights and activations in ``dtype`` and the head (pooling, classifier,
    softmax of the fully-convolutional test) in float32, where rounding would otherwise reach the scores.

    Casting the weights once beats autocast, which re-casts every weight on every call."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        # The classifier keeps its float32 values: casting it to ``dtype`` and back would leave it float32
        # in name only, with every weight rounded to ``dtype``'s precision.
        head_state = {k: v.detach().clone() for k, v in net.get_classifier().state_dict().items()}
        self.net = net.to(dtype)
        self.dtype = dtype
        self.net.get_classifier().float().load_state_dict(head_state)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        features = self.net.forward_features(x.to(self.dtype))
        return self.net.forward_head(features.float(), **kwargs)


class InferenceModel(nn.Module):
    """Runs a prepared copy of a network under inference mode, in channels_last_3d.

    Outputs are returned in float32 whatever the compute precision.
    """

    def __init__(self, net: nn.Module, precision: str = 'fp32', channels_last: bool = True,
                 compiled: bool = False, pretrained_cfg=None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.net = net
        self.precision = precision
        self.channels_last = channels_last
        self.compiled = compiled
        self.pretrained_cfg = pretrained_cfg if pretrained_cfg is not None else getattr(net, 'pretrained_cfg', None)

    def _compile_config(self):
        if not self.compiled:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config
        # Freezing lets inductor treat weights as constants: it pre-packs them for oneDNN and fuses
        # conv + bias + ReLU (+ residual add): faster than compiling without it (benchmarks/bench_network.py).
        return inductor_config.patch(freezing=True)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        with torch.inference_mode(), self._compile_config():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            return self.net(x, **kwargs).float()


def prepare_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                          precision: str = 'fp32', compile: bool = False,
                          device: Optional[torch.device] = None) -> InferenceModel:
    """The fast path of ``model`` for evaluation; ``model`` itself is left untouched.

    fp32 with folded BN and channels_last_3d computes the same function as the original up to float32
    rounding. 'bf16'/'fp16' (opt-in, less exact) run the backbone in that precision and the head in
    float32; ``compile`` wraps the network in torch.compile (inductor, with weight freezing).
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    cfg = getattr(model, 'pretrained_cfg', None)
    net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if device is not None:
        net = net.to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    if precision != 'fp32':
        if not (hasattr(net, 'forward_features') and hasattr(net, 'forward_head')):
            raise TypeError(f'{type(net).__name__} has no forward_features/forward_head to split for {precision}')
        net = ReducedPrecisionBody(net, _DTYPES[precision])
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    if compile:
        net = torch.compile(net)
    return InferenceModel(net, precision=precision, channels_last=channels_last, compiled=compile,
                          pretrained_cfg=cfg)
