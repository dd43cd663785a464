"""Inflated-2D-ResNet factory: one ResNet3D class builds C2D, I3D and their non-local versions from a spec.

The spec is data: a 2D ResNet description (blocks per stage, widths) plus a temporal specification
(temporal kernel/stride of conv1 and of each block's first conv, pool1/pool2, non-local positions,
BatchNorm or frozen affine). Module names follow timm/torchvision ResNet (conv1, bn1, layer1..4, fc), so a
2D ResNet-50 state dict inflates key for key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Triple = Tuple[int, int, int]

# Caffe2 SpatialBN epsilon of video-nonlocal-net (cfg.MODEL.BN_EPSILON = 1.0000001e-5).
CAFFE2_BN_EPS = 1.0000001e-5


class AffineChannel3d(nn.Module):
    """Frozen BatchNorm as Caffe2's AffineChannel: y = x * weight + bias, per channel, never trained.

    The 128x1 and 32x4 Caffe2 models store only `_s` and `_b` for these layers.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.register_buffer('weight', torch.ones(num_features))
        self.register_buffer('bias', torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def make_norm(kind: str, channels: int, eps: float) -> nn.Module:
    if kind == 'bn':
        return nn.BatchNorm3d(channels, eps=eps)  # momentum 0.1 == Caffe2 moving-average momentum 0.9
    if kind == 'frozen_affine':
        return AffineChannel3d(channels)
    raise ValueError(f'unknown norm {kind!r}: expected "bn" or "frozen_affine"')


@dataclass(frozen=True)
class ResNet3DSpec:
    """Everything that tells one member of the family from another, per stage where it varies."""
    layers: Tuple[int, ...] = (3, 4, 6, 3)            # bottleneck blocks per stage (res2..res5)
    widths: Tuple[int, ...] = (64, 128, 256, 512)     # inner width per stage; output is 4x
    stem_width: int = 64
    spatial_strides: Tuple[int, ...] = (1, 2, 2, 2)   # on branch2b (the 3x3) of each stage's first block
    conv1_temporal_kernel: int = 5
    conv1_temporal_stride: int = 2
    pool1_kernel: Triple = (2, 3, 3)
    pool1_stride: Triple = (2, 2, 2)
    pool2_kernel: Optional[Triple] = (2, 1, 1)        # after res2; None for no pool2
    # temporal kernel of branch2a for every block, per stage (1 + 2u in Caffe2's use_temp_convs)
    temporal_kernels: Tuple[Tuple[int, ...], ...] = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1))
    # temporal stride of branch2a for every block, per stage (all 1 in video-nonlocal-net)
    temporal_strides: Optional[Tuple[Tuple[int, ...], ...]] = None
    # indices of the residual blocks each stage's non-local blocks follow
    nonlocal_blocks: Tuple[Tuple[int, ...], ...] = ((), (), (), ())
    nonlocal_pool: Triple = (1, 2, 2)                 # max pool of phi and g
    norm: str = 'bn'                                  # 'bn' or 'frozen_affine'
    bn_eps: float = CAFFE2_BN_EPS

    def __post_init__(self):
        n = len(self.layers)
        for name in ('widths', 'spatial_strides', 'temporal_kernels', 'nonlocal_blocks'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name} has {len(getattr(self, name))} stages, layers has {n}')
        for s, (count, kernels) in enumerate(zip(self.layers, self.temporal_kernels)):
            if len(kernels) != count:
                raise ValueError(f'stage {s}: {len(kernels)} temporal kernels for {count} blocks')
            if any(k % 2 == 0 for k in kernels):
                raise ValueError(f'stage {s}: temporal kernels must be odd, got {kernels}')
        for s, blocks in enumerate(self.nonlocal_blocks):
            if any(not 0 <= i < self.layers[s] for i in blocks):
                raise ValueError(f'stage {s}: non-local after blocks {blocks}, stage has {self.layers[s]}')

    def block_temporal_strides(self, stage: int) -> Tuple[int, ...]:
        if self.temporal_strides is None:
            return (1,) * self.layers[stage]
        return self.temporal_strides[stage]


def temporal_kernels_from_use_temp_convs(*use_temp_convs: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Caffe2's per-block `use_temp_convs` flags u -> branch2a temporal kernels 1 + 2u."""
    return tuple(tuple(1 + 2 * u for u in stage) for stage in use_temp_convs)


class NonLocalBlock3d(nn.Module):
    """Embedded-Gaussian non-local block (Caffe2 `nonlocal_conv{s}_{i}`, dot product + softmax, scaled).

    theta/phi/g are 1x1x1 convs with bias at half the width; phi and g see a max-pooled input. The `out`
    conv is followed by BN whose scale starts at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, inner: Optional[int] = None, pool: Triple = (1, 2, 2),
                 norm: str = 'bn', bn_eps: float = CAFFE2_BN_EPS):
        super().__init__()
        inner = inner or channels // 2
        self.inner = inner
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.pool = nn.MaxPool3d(pool, stride=pool) if pool != (1, 1, 1) else nn.Identity()
        self.out = nn.Conv3d(inner, channels, 1)
        self.bn = make_norm(norm, channels, bn_eps)
        for conv in (self.theta, self.phi, self.g, self.out):   # Caffe2: GaussianFill std 0.01, bias 0
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.bn.weight)                          # cfg.NONLOCAL.BN_INIT_GAMMA = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        theta = self.theta(x).flatten(2)                  # (N, C', THW)
        pooled = self.pool(x)
        phi = self.phi(pooled).flatten(2)                 # (N, C', T'H'W')
        g = self.g(pooled).flatten(2)                     # (N, C', T'H'W')
        affinity = torch.einsum('ncq,nck->nqk', theta, phi) * self.inner ** -0.5
        affinity = affinity.softmax(dim=-1)
        y = torch.einsum('nqk,nck->ncq', affinity, g).reshape(n, self.inner, t, h, w)
        return x + self.bn(self.out(y))


class Bottleneck3d(nn.Module):
    """ResNet bottleneck with a (kt,1,1) first conv, the spatial stride on the 1x3x3 conv (Caffe2 branch2b)."""
    expansion = 4

    def __init__(self, in_ch: int, width: int, spatial_stride: int = 1, temporal_kernel: int = 1,
                 temporal_stride: int = 1, norm: str = 'bn', bn_eps: float = CAFFE2_BN_EPS,
                 non_local: bool = False, nonlocal_pool: Triple = (1, 2, 2)):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv3d(in_ch, width, (temporal_kernel, 1, 1), stride=(temporal_stride, 1, 1),
                               padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.bn1 = make_norm(norm, width, bn_eps)
        self.conv2 = nn.Conv3d(width, width, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = make_norm(norm, width, bn_eps)
        self.conv3 = nn.Conv3d(width, out_ch, 1, bias=False)
        self.bn3 = make_norm(norm, out_ch, bn_eps)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if spatial_stride != 1 or temporal_stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=(temporal_stride, spatial_stride, spatial_stride), bias=False),
                make_norm(norm, out_ch, bn_eps))
        self.non_local = NonLocalBlock3d(out_ch, pool=nonlocal_pool, norm=norm, bn_eps=bn_eps) if non_local else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = self.act(x + shortcut)
        if self.non_local is not None:
            x = self.non_local(x)
        return x


class ResNet3D(nn.Module):
    """Video ResNet of the video-nonlocal-net family, built from a ResNet3DSpec.

    ``forward`` returns logits. With ``fully_conv_test`` (at creation, or per call) the head reproduces
    the Caffe2 test: average pool (T', 7, 7) with stride 1, the classifier at every position of the pooled
    map, softmax per position, positions averaged; it then returns the log of the averaged probabilities,
    so ``softmax`` of the output is exactly the Caffe2 view score.
    """

    def __init__(self, spec: ResNet3DSpec = ResNet3DSpec(), num_classes: int = 400, in_chans: int = 3,
                 drop_rate: float = 0.5, fully_conv_test: bool = False, head_pool_size: int = 7):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.fully_conv_test = fully_conv_test
        self.head_pool_size = head_pool_size
        kt = spec.conv1_temporal_kernel
        self.conv1 = nn.Conv3d(in_chans, spec.stem_width, (kt, 7, 7), stride=(spec.conv1_temporal_stride, 2, 2),
                               padding=(kt // 2, 3, 3), bias=False)
        self.bn1 = make_norm(spec.norm, spec.stem_width, spec.bn_eps)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(spec.pool1_kernel, stride=spec.pool1_stride)   # Caffe2 pool1: no padding
        self.pool2 = nn.MaxPool3d(spec.pool2_kernel, stride=spec.pool2_kernel) if spec.pool2_kernel else None
        in_ch = spec.stem_width
        self.feature_info = [dict(num_chs=spec.stem_width, reduction=4, module='maxpool')]
        for s, (count, width) in enumerate(zip(spec.layers, spec.widths)):
            blocks = []
            strides = spec.block_temporal_strides(s)
            for i in range(count):
                blocks.append(Bottleneck3d(
                    in_ch, width, spatial_stride=spec.spatial_strides[s] if i == 0 else 1,
                    temporal_kernel=spec.temporal_kernels[s][i], temporal_stride=strides[i],
                    norm=spec.norm, bn_eps=spec.bn_eps, non_local=i in spec.nonlocal_blocks[s],
                    nonlocal_pool=spec.nonlocal_pool))
                in_ch = width * Bottleneck3d.expansion
            self.add_module(f'layer{s + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_ch, reduction=4 * 2 ** s, module=f'layer{s + 1}'))
        self.num_features = self.head_hidden_size = in_ch
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        for name, m in self.named_modules():
            if '.non_local' in name:
                continue  # initialised by NonLocalBlock3d itself
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')  # Caffe2 MSRAFill
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.fc, nn.Linear):  # Caffe2 pred: GaussianFill std 0.01, bias 0
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    @property
    def stages(self) -> Tuple[nn.Module, ...]:
        return tuple(getattr(self, f'layer{s + 1}') for s in range(len(self.spec.layers)))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> res5 feature map (N, num_features, T', H', W')."""
        if x.dim() != 5:
            raise ValueError(f'expected a (N, C, T, H, W) clip batch, got shape {tuple(x.shape)}')
        x = self.forward_stem(x)
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s == 0 and self.pool2 is not None:
                x = self.pool2(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     fully_conv: Optional[bool] = None) -> torch.Tensor:
        fully_conv = self.fully_conv_test if fully_conv is None else fully_conv
        if not fully_conv:
            x = x.mean(dim=(2, 3, 4))
            if pre_logits:
                return x
            return self.fc(self.drop(x))
        # Caffe2 test head: pool1 of the head is AveragePool (T', 7, 7) stride 1, then pred as a 1x1x1 conv.
        kernel = (x.shape[2], min(self.head_pool_size, x.shape[3]), min(self.head_pool_size, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)                    # (N, C, 1, h, w)
        x = x.flatten(2).transpose(1, 2)                         # (N, positions, C)
        if pre_logits:
            return x.mean(dim=1)
        log_probs = self.fc(self.drop(x)).log_softmax(dim=-1)    # softmax at each position
        return torch.logsumexp(log_probs, dim=1) - math.log(log_probs.shape[1])  # log of mean probability

    def forward(self, x: torch.Tensor, fully_conv: Optional[bool] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), fully_conv=fully_conv)


def with_nonlocal(spec: ResNet3DSpec, nonlocal_blocks) -> ResNet3DSpec:
    return replace(spec, nonlocal_blocks=tuple(tuple(b) for b in nonlocal_blocks))
