"""Inflated-2D-ResNet factory: one ResNet3D class builds C2D, I3D and their non-local versions from a spec.

The spec is data: a 2D ResNet description (blocks per stage, widths) plus a temporal specification
(temporal kernel/stride of conv1 and of each block's first conv, pool1/pool2, non-local positions,
BatchNorm or frozen affine). Module names follow timm/torchvision ResNet (conv1, bn1, layer1..4, fc), so a
2D ResNet-50 state dict inflates key for key.
"""

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers.helpers import get_device_dtype
from torch import nn

from ._features import TrunkFeaturesMixin

Triple = Tuple[int, int, int]

# Caffe2 SpatialBN epsilon of video-nonlocal-net (cfg.MODEL.BN_EPSILON = 1.0000001e-5).
CAFFE2_BN_EPS = 1.0000001e-5


class AffineChannel3d(nn.Module):
    """Frozen BatchNorm as Caffe2's AffineChannel: y = x * weight + bias, per channel, never trained.

    The 128x1 and 32x4 Caffe2 models store only `_s` and `_b` for these layers. Input (N, C, T, H, W).
    """

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.register_buffer('weight', torch.ones(num_features, device=device, dtype=dtype))
        self.register_buffer('bias', torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


NORMS = ('bn', 'frozen_affine', 'none')


def make_norm(kind: str, channels: int, eps: float, device=None, dtype=None) -> nn.Module:
    if kind == 'bn':  # momentum 0.1 == Caffe2 moving-average momentum 0.9
        return nn.BatchNorm3d(channels, eps=eps, device=device, dtype=dtype)
    if kind == 'frozen_affine':
        return AffineChannel3d(channels, device=device, dtype=dtype)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f'unknown norm {kind!r}: expected one of {NORMS}')


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


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
    # per stage: non-local attention within groups of this many consecutive time steps (0: the whole clip)
    nonlocal_temporal_groups: Tuple[int, ...] = (0, 0, 0, 0)
    nonlocal_norm: str = 'bn'                         # after the non-local `out` conv: 'bn', 'frozen_affine', 'none'
    norm: str = 'bn'                                  # 'bn' or 'frozen_affine'
    bn_eps: float = CAFFE2_BN_EPS

    def __post_init__(self):
        n = len(self.layers)
        if n != 4:
            raise ValueError(f'a ResNet has 4 residual stages (res2..res5), got {n}')
        for name in ('widths', 'spatial_strides', 'temporal_kernels', 'nonlocal_blocks', 'nonlocal_temporal_groups'):
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
        if self.norm not in NORMS[:2] or self.nonlocal_norm not in NORMS:
            raise ValueError(f'norm {self.norm!r} / nonlocal_norm {self.nonlocal_norm!r}: expected {NORMS}')

    def block_temporal_strides(self, stage: int) -> Tuple[int, ...]:
        if self.temporal_strides is None:
            return (1,) * self.layers[stage]
        return self.temporal_strides[stage]

    def feature_sizes(self, frames: int, size: int) -> List[Triple]:
        """(T, H, W) of the five feature maps (stem after act1, res2..res5) of a frames x size x size clip.

        The arithmetic of the layers' kernels, strides and paddings; raises ValueError naming the first
        layer the clip is too small for (unpadded pools, non-local max pools, temporal groups)."""
        kt = self.conv1_temporal_kernel
        t, h = _conv_out(frames, kt, self.conv1_temporal_stride, kt // 2), _conv_out(size, 7, 2, 3)
        if t < 1 or h < 1:
            raise ValueError(f'{frames}x{size}x{size}: too small for conv1')
        sizes = [(t, h, h)]
        (pk_t, pk_s, _), (ps_t, ps_s, _) = self.pool1_kernel, self.pool1_stride
        if t < pk_t or h < pk_s:
            raise ValueError(f'{frames}x{size}x{size}: conv1 output ({t}, {h}, {h}) is smaller than pool1')
        t, h = (t - pk_t) // ps_t + 1, (h - pk_s) // ps_s + 1
        for s in range(4):
            if s == 1 and self.pool2_kernel is not None:
                if t < self.pool2_kernel[0]:
                    raise ValueError(f'{frames}x{size}x{size}: res2 output has {t} time steps, fewer than pool2')
                t = (t - self.pool2_kernel[0]) // self.pool2_kernel[0] + 1
            h = (h - 1) // self.spatial_strides[s] + 1
            for stride in self.block_temporal_strides(s):
                t = (t - 1) // stride + 1
            if self.nonlocal_blocks[s]:
                if h < self.nonlocal_pool[1]:
                    raise ValueError(f'{frames}x{size}x{size}: res{s + 2} map ({t}, {h}, {h}) is smaller than '
                                     f'the non-local max pool {self.nonlocal_pool}')
                group = self.nonlocal_temporal_groups[s]
                if group and t % group:
                    raise ValueError(f'{frames}x{size}x{size}: res{s + 2} has {t} time steps, not a multiple of '
                                     f'its non-local temporal group of {group}')
            sizes.append((t, h, h))
        return sizes

    def fits(self, frames: int, size: int) -> bool:
        try:
            self.feature_sizes(frames, size)
        except ValueError:
            return False
        return True

    def min_input_size(self, search: int = 1024) -> Tuple[int, int]:
        """(frames, size): the fewest frames the network takes at a large size, and the smallest size it
        takes at that many frames."""
        frames = next(t for t in range(1, search) if self.fits(t, search))
        return frames, next(s for s in range(1, search) if self.fits(frames, s))

    def temporal_reductions(self) -> Tuple[int, ...]:
        """Input frames per time step of the five feature maps (stem, res2..res5)."""
        reduction = self.conv1_temporal_stride
        out = [reduction]
        reduction *= self.pool1_stride[0]
        for s in range(4):
            if s == 1 and self.pool2_kernel is not None:
                reduction *= self.pool2_kernel[0]
            reduction *= math.prod(self.block_temporal_strides(s))
            out.append(reduction)
        return tuple(out)


def temporal_kernels_from_use_temp_convs(*use_temp_convs: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Caffe2's per-block `use_temp_convs` flags u -> branch2a temporal kernels 1 + 2u."""
    return tuple(tuple(1 + 2 * u for u in stage) for stage in use_temp_convs)


class NonLocalBlock3d(nn.Module):
    """Embedded-Gaussian non-local block (Caffe2 `nonlocal_conv{s}_{i}`, dot product + softmax, scaled).

    theta/phi/g are 1x1x1 convs with bias at half the width; phi and g see a max-pooled input. The `out`
    conv is followed by a norm whose scale starts at zero (or, without a norm, the `out` conv starts at
    zero: Caffe2's USE_ZERO_INIT_CONV), so a fresh block is the identity.

    ``temporal_group`` > 0 is Caffe2's `add_nonlocal_group`: the (N, C, T, H, W) map is cut into T / group
    clips of ``temporal_group`` consecutive time steps, each attended over separately, and put back in order.
    """

    def __init__(self, channels: int, inner: Optional[int] = None, pool: Triple = (1, 2, 2),
                 norm: str = 'bn', bn_eps: float = CAFFE2_BN_EPS, temporal_group: int = 0,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        inner = inner or channels // 2
        self.inner = inner
        self.temporal_group = temporal_group
        self.theta = nn.Conv3d(channels, inner, 1, **dd)
        self.phi = nn.Conv3d(channels, inner, 1, **dd)
        self.g = nn.Conv3d(channels, inner, 1, **dd)
        self.pool = nn.MaxPool3d(pool, stride=pool) if tuple(pool) != (1, 1, 1) else nn.Identity()
        self.out = nn.Conv3d(inner, channels, 1, **dd)
        self.bn = make_norm(norm, channels, bn_eps, **dd)
        for conv in (self.theta, self.phi, self.g, self.out):   # Caffe2: GaussianFill std 0.01, bias 0
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if norm == 'none':
            nn.init.zeros_(self.out.weight)                     # cfg.NONLOCAL.USE_ZERO_INIT_CONV
        else:
            nn.init.zeros_(self.bn.weight)                      # cfg.NONLOCAL.BN_INIT_GAMMA = 0

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """x + norm(out(attention over every position of x))."""
        theta = self.theta(x).flatten(2)                  # (N, C', THW)
        pooled = self.pool(x)
        phi = self.phi(pooled).flatten(2)                 # (N, C', T'H'W')
        g = self.g(pooled).flatten(2)                     # (N, C', T'H'W')
        affinity = torch.einsum('ncq,nck->nqk', theta, phi) * self.inner ** -0.5
        affinity = affinity.softmax(dim=-1)
        y = torch.einsum('nqk,nck->ncq', affinity, g)
        y = y.reshape(x.shape[0], self.inner, x.shape[2], x.shape[3], x.shape[4])
        return x + self.bn(self.out(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal_group <= 0:
            return self.attend(x)
        n, c, t, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        group = self.temporal_group
        torch._assert(t % group == 0, 'grouped non-local: the time steps must be a multiple of the group size')
        # (N, C, T, H, W) -> (N * T/g, C, g, H, W): group k of clip n holds its steps k*g .. k*g + g - 1.
        x = x.reshape(n, c, t // group, group, h, w).transpose(1, 2).reshape(n * (t // group), c, group, h, w)
        x = self.attend(x)
        return x.reshape(n, t // group, c, group, h, w).transpose(1, 2).reshape(n, c, t, h, w)


class Bottleneck3d(nn.Module):
    """ResNet bottleneck with a (kt,1,1) first conv, the spatial stride on the 1x3x3 conv (Caffe2 branch2b)."""
    expansion = 4

    def __init__(self, in_ch: int, width: int, spatial_stride: int = 1, temporal_kernel: int = 1,
                 temporal_stride: int = 1, norm: str = 'bn', bn_eps: float = CAFFE2_BN_EPS,
                 non_local: bool = False, nonlocal_pool: Triple = (1, 2, 2), nonlocal_norm: str = 'bn',
                 nonlocal_temporal_group: int = 0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        out_ch = width * self.expansion
        self.conv1 = nn.Conv3d(in_ch, width, (temporal_kernel, 1, 1), stride=(temporal_stride, 1, 1),
                               padding=(temporal_kernel // 2, 0, 0), bias=False, **dd)
        self.bn1 = make_norm(norm, width, bn_eps, **dd)
        self.conv2 = nn.Conv3d(width, width, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                               padding=(0, 1, 1), bias=False, **dd)
        self.bn2 = make_norm(norm, width, bn_eps, **dd)
        self.conv3 = nn.Conv3d(width, out_ch, 1, bias=False, **dd)
        self.bn3 = make_norm(norm, out_ch, bn_eps, **dd)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if spatial_stride != 1 or temporal_stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=(temporal_stride, spatial_stride, spatial_stride), bias=False,
                          **dd),
                make_norm(norm, out_ch, bn_eps, **dd))
        self.non_local = NonLocalBlock3d(out_ch, pool=nonlocal_pool, norm=nonlocal_norm, bn_eps=bn_eps,
                                         temporal_group=nonlocal_temporal_group, **dd) if non_local else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = self.act(x + shortcut)
        if self.non_local is not None:
            x = self.non_local(x)
        return x


class GlobalPool3d(nn.Module):
    """timm's global pools over (T, H, W): 'avg', 'max', 'avgmax', 'catavgmax' (2x channels), or '' (none)."""
    POOL_TYPES = ('avg', 'max', 'avgmax', 'catavgmax', '')

    def __init__(self, pool_type: str = 'avg'):
        super().__init__()
        assert pool_type in self.POOL_TYPES, f'global_pool {pool_type!r}: expected one of {self.POOL_TYPES}'
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        return 2 if self.pool_type == 'catavgmax' else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == 'avg':
            return x.mean(dim=[2, 3, 4])
        if self.pool_type == 'max':
            return x.amax(dim=[2, 3, 4])
        if self.pool_type == 'avgmax':
            return 0.5 * (x.mean(dim=[2, 3, 4]) + x.amax(dim=[2, 3, 4]))
        if self.pool_type == 'catavgmax':
            return torch.cat([x.mean(dim=[2, 3, 4]), x.amax(dim=[2, 3, 4])], dim=1)
        return x

    def extra_repr(self) -> str:
        return f'pool_type={self.pool_type!r}'


class ResNet3D(TrunkFeaturesMixin, nn.Module):
    """Video ResNet of the video-nonlocal-net family, built from a ResNet3DSpec.

    ``forward`` returns logits. With ``fully_conv_test`` (at creation, or per call) the head reproduces
    the Caffe2 test: average pool (T', 7, 7) with stride 1, the classifier at every position of the pooled
    map, softmax per position, positions averaged; it then returns the log of the averaged probabilities,
    so ``softmax`` of the output is exactly the Caffe2 view score.

    Children are registered in the order they run (pool2 after layer1): ``forward_features``,
    ``forward_intermediates`` (TrunkFeaturesMixin) and timm's FeatureListNet all walk them in that order.
    """
    __jit_unused_properties__ = ['stages']

    def __init__(self, spec: ResNet3DSpec = ResNet3DSpec(), num_classes: int = 400, in_chans: int = 3,
                 drop_rate: float = 0.5, global_pool: str = 'avg', fully_conv_test: bool = False,
                 head_pool_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.spec = spec
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.fully_conv_test = fully_conv_test
        self.head_pool_size = head_pool_size
        self.grad_checkpointing = False
        kt = spec.conv1_temporal_kernel
        self.conv1 = nn.Conv3d(in_chans, spec.stem_width, (kt, 7, 7), stride=(spec.conv1_temporal_stride, 2, 2),
                               padding=(kt // 2, 3, 3), bias=False, **dd)
        self.bn1 = make_norm(spec.norm, spec.stem_width, spec.bn_eps, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(spec.pool1_kernel, stride=spec.pool1_stride)   # Caffe2 pool1: no padding
        temporal = spec.temporal_reductions()
        self.feature_info = [dict(num_chs=spec.stem_width, reduction=2, temporal_reduction=temporal[0],
                                  module='act1')]
        self.trunk: List[str] = ['conv1', 'bn1', 'act1', 'maxpool']
        in_ch = spec.stem_width
        for s, (count, width) in enumerate(zip(spec.layers, spec.widths)):
            blocks = []
            strides = spec.block_temporal_strides(s)
            for i in range(count):
                blocks.append(Bottleneck3d(
                    in_ch, width, spatial_stride=spec.spatial_strides[s] if i == 0 else 1,
                    temporal_kernel=spec.temporal_kernels[s][i], temporal_stride=strides[i],
                    norm=spec.norm, bn_eps=spec.bn_eps, non_local=i in spec.nonlocal_blocks[s],
                    nonlocal_pool=spec.nonlocal_pool, nonlocal_norm=spec.nonlocal_norm,
                    nonlocal_temporal_group=spec.nonlocal_temporal_groups[s], **dd))
                in_ch = width * Bottleneck3d.expansion
            self.add_module(f'layer{s + 1}', nn.Sequential(*blocks))
            self.trunk.append(f'layer{s + 1}')
            self.feature_info.append(dict(num_chs=in_ch, reduction=4 * 2 ** s, temporal_reduction=temporal[s + 1],
                                          module=f'layer{s + 1}'))
            if s == 0:  # Caffe2 pool2 runs after res2
                self.pool2 = nn.MaxPool3d(spec.pool2_kernel, stride=spec.pool2_kernel) if spec.pool2_kernel \
                    else nn.Identity()
                self.trunk.append('pool2')
        self.num_features = in_ch
        self.global_pool = GlobalPool3d(global_pool)
        self.head_hidden_size = in_ch * self.global_pool.feat_mult()
        self.drop = nn.Dropout(drop_rate)
        self.fc = self._make_classifier(num_classes, **dd)
        self._init_weights()

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        assert self.global_pool.pool_type, 'global_pool="" (no pooling) needs num_classes=0'
        fc = nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)
        nn.init.normal_(fc.weight, std=0.01)  # Caffe2 pred: GaussianFill std 0.01, bias 0
        nn.init.zeros_(fc.bias)
        return fc

    def _init_weights(self):
        for name, m in self.named_modules():
            if '.non_local' in name:
                continue  # initialised by NonLocalBlock3d itself
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')  # Caffe2 MSRAFill
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> Tuple[nn.Module, ...]:
        return tuple(getattr(self, f'layer{s + 1}') for s in range(len(self.spec.layers)))

    # --- timm's model protocol
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        """Parameter groups for layer-wise LR decay: the stem, then each stage (coarse) or each block."""
        return dict(stem=r'^(?:conv1|bn1)\.', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """No tensor beyond those timm already exempts (biases and norm parameters, every 1-D tensor):
        these networks have no embeddings or tokens."""
        return set()

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head of ``num_classes`` (0: none) on the model's device and dtype; ``global_pool`` None keeps
        the current pooling."""
        dd = get_device_dtype(self)
        if global_pool is not None:
            self.global_pool = GlobalPool3d(global_pool)
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = self._make_classifier(num_classes, **dd)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     fully_conv: Optional[bool] = None) -> torch.Tensor:
        use_fully_conv = self.fully_conv_test
        if isinstance(fully_conv, bool):  # not `is None`: under torch.fx tracing an unset argument is a Proxy
            use_fully_conv = fully_conv
        if not use_fully_conv:
            x = self.global_pool(x)
            if pre_logits:
                return x
            return self.fc(self.drop(x))
        torch._assert(self.global_pool.pool_type == 'avg', 'the Caffe2 fully-convolutional head averages')
        # Caffe2 test head: pool1 of the head is AveragePool (T', 7, 7) stride 1, then pred as a 1x1x1 conv.
        kernel = [x.shape[2], min(self.head_pool_size, x.shape[3]), min(self.head_pool_size, x.shape[4])]
        x = F.avg_pool3d(x, kernel, stride=1)                    # (N, C, 1, h, w)
        x = x.flatten(2).transpose(1, 2)                         # (N, positions, C)
        if pre_logits:
            return x.mean(dim=1)
        log_probs = self.fc(self.drop(x)).log_softmax(dim=-1)    # softmax at each position
        return torch.logsumexp(log_probs, dim=1) - math.log(log_probs.shape[1])  # log of mean probability

    def forward(self, x: torch.Tensor, fully_conv: Optional[bool] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), fully_conv=fully_conv)


def with_nonlocal(spec: ResNet3DSpec, nonlocal_blocks, **changes) -> ResNet3DSpec:
    return replace(spec, nonlocal_blocks=tuple(tuple(b) for b in nonlocal_blocks), **changes)
