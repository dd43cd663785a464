"""Zoo entries for the Caffe2 video-nonlocal-net Kinetics-400 models (C2D / I3D, with and without non-local).

Each entry only picks a ResNet3DSpec; the pretrained configs are declarative records of the published
checkpoints (facts from video-nonlocal-net's README and configs), completed with what the spec implies
(smallest clip, feature-map size). Pretrained weights come through converters.caffe2's loader.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional

import torch

from converters.caffe2 import load_pretrained as load_caffe2_pretrained

from ._builder import build_model_with_cfg
from ._pretrained import VideoPretrainedCfg, kinetics400_class_names
from ._registry import get_pretrained_cfg, list_models, register_model
from .resnet3d import ResNet3D, ResNet3DSpec, temporal_kernels_from_use_temp_convs, with_nonlocal

CAFFE2_URL = 'https://dl.fbaipublicfiles.com/video-nonlocal/{}.pkl'

# use_temp_convs of the I3D models (resnet_video.py, ResNet-50): branch2a temporal kernel 1 + 2u.
I3D_TEMPORAL_KERNELS = temporal_kernels_from_use_temp_convs(
    (1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
C2D_TEMPORAL_KERNELS = temporal_kernels_from_use_temp_convs(
    (0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (0, 0, 0))
# Non-local blocks after residual blocks 1, 3 of res3 and 1, 3, 5 of res4 (the 32x2 and 8x8 NL models).
NONLOCAL_RES3_RES4 = ((), (1, 3), (1, 3, 5), ())

# "org" layout of the 32x2 and 128x1 models: conv1 stride 2 in time, pool1 (2,3,3) stride 2, no padding.
I3D_32X2 = ResNet3DSpec(conv1_temporal_kernel=5, conv1_temporal_stride=2,
                        pool1_kernel=(2, 3, 3), pool1_stride=(2, 2, 2),
                        temporal_kernels=I3D_TEMPORAL_KERNELS)
# 8x8 and 32x4 layout: no temporal stride in the stem.
I3D_8X8 = replace(I3D_32X2, conv1_temporal_stride=1, pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2))
C2D_32X2 = replace(I3D_32X2, conv1_temporal_kernel=1, temporal_kernels=C2D_TEMPORAL_KERNELS)
C2D_8X8 = replace(I3D_8X8, conv1_temporal_kernel=1, temporal_kernels=C2D_TEMPORAL_KERNELS)
# Models initialised from the 32x2 I3D and trained with frozen BN (Caffe2 AffineChannel).
I3D_128X1_FROZEN = replace(I3D_32X2, norm='frozen_affine')
I3D_32X4_FROZEN = replace(I3D_8X8, norm='frozen_affine')
# The frozen-BN non-local models (DBG_kinetics_resnet_8gpu_c2d_nonlocal_affine_400k.yaml): res3's blocks
# attend within groups of 4 time steps (add_nonlocal_group), res4's over the whole clip; NONLOCAL.USE_BN
# and USE_AFFINE are False, so nothing follows the `out` conv.
GROUPED_NONLOCAL = dict(nonlocal_temporal_groups=(0, 4, 0, 0), nonlocal_norm='none')
I3D_NL_128X1_FROZEN = with_nonlocal(I3D_128X1_FROZEN, NONLOCAL_RES3_RES4, **GROUPED_NONLOCAL)
I3D_NL_32X4_FROZEN = with_nonlocal(I3D_32X4_FROZEN, NONLOCAL_RES3_RES4, **GROUPED_NONLOCAL)

_PAPER = 'Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018'
_PAPER_URL = 'https://arxiv.org/abs/1711.07971'
_PROTOCOL = ('Caffe2 fully-convolutional test, 30 views (10 clips x 3 crops of 256), softmax averaged, '
             'on their 19,761-video Kinetics-400 validation copy')


CAFFE2_TAG = 'c2_kinetics400'


def _caffe2_cfg(spec: ResNet3DSpec, source_name: str, frames: int, rate: int, top1: float, top5: float,
                paper_top1: float = None, **kwargs) -> VideoPretrainedCfg:
    cfg = VideoPretrainedCfg(
        tag=CAFFE2_TAG, source_name=source_name, url=CAFFE2_URL.format(source_name), source_format='caffe2_pickle',
        license='CC-BY-NC-4.0', paper=_PAPER, paper_url=_PAPER_URL,
        origin='facebookresearch/video-nonlocal-net (Caffe2)',
        num_frames=frames, sampling_rate=rate, class_names=kinetics400_class_names(),
        top1=top1, top5=top5, paper_top1=paper_top1, eval_protocol=_PROTOCOL, **kwargs)
    min_frames, min_crop_size = spec.min_input_size()
    return cfg.replace(min_frames=min_frames, min_crop_size=min_crop_size,
                       pool_size=spec.feature_sizes(frames, cfg.crop_size)[-1])


_FROZEN = 'frozen BN (affine); initialised from the 32x2 I3D'
_GROUPED = ('frozen BN (affine); initialised from the 32x2 I3D; res3 non-local blocks attend within groups of 4 '
            'time steps (the clip length must give res3 a multiple of 4)')

# name -> (spec, config): the spec builds the network, the config describes its published checkpoint.
_ENTRIES = {
    'i3d_r50': (I3D_32X2, ('i3d_baseline_32x2_IN_pretrain_400k', 32, 2, 73.6, 90.8, 73.3)),
    'i3d_nl_r50': (with_nonlocal(I3D_32X2, NONLOCAL_RES3_RES4),
                   ('i3d_nonlocal_32x2_IN_pretrain_400k', 32, 2, 74.9, 91.6, 74.9)),
    'c2d_r50': (C2D_32X2, ('c2d_baseline_32x2_IN_pretrain_400k', 32, 2, 72.0, 90.0, 71.8)),
    'c2d_nl_r50': (with_nonlocal(C2D_32X2, NONLOCAL_RES3_RES4),
                   ('c2d_nonlocal_32x2_IN_pretrain_400k', 32, 2, 73.9, 91.0, 73.8)),
    'i3d_r50_8x8': (I3D_8X8, ('i3d_baseline_8x8_IN_pretrain_400k', 8, 8, 73.4, 90.9)),
    'i3d_nl_r50_8x8': (with_nonlocal(I3D_8X8, NONLOCAL_RES3_RES4),
                       ('i3d_nonlocal_8x8_IN_pretrain_400k', 8, 8, 74.7, 91.6)),
    'c2d_r50_8x8': (C2D_8X8, ('c2d_baseline_8x8_IN_pretrain_400k', 8, 8, 71.9, 90.0)),
    'c2d_nl_r50_8x8': (with_nonlocal(C2D_8X8, NONLOCAL_RES3_RES4),
                       ('c2d_nonlocal_8x8_IN_pretrain_400k', 8, 8, 74.4, 91.4)),
    'i3d_r50_128x1': (I3D_128X1_FROZEN, ('i3d_baseline_128x1_I3D_pretrain_400k', 128, 1, 75.2, 92.0, 74.9)),
    'i3d_r50_32x4': (I3D_32X4_FROZEN, ('i3d_baseline_32x4_I3D_pretrain_400k', 32, 4, 75.5, 92.0)),
    'i3d_nl_r50_128x1': (I3D_NL_128X1_FROZEN, ('i3d_nonlocal_128x1_I3D_pretrain_400k', 128, 1, 76.5, 92.7, 76.5)),
    'i3d_nl_r50_32x4': (I3D_NL_32X4_FROZEN, ('i3d_nonlocal_32x4_I3D_pretrain_400k', 32, 4, 76.5, 92.6)),
}
_NOTES = {'i3d_r50_128x1': _FROZEN, 'i3d_r50_32x4': _FROZEN, 'i3d_nl_r50_128x1': _GROUPED, 'i3d_nl_r50_32x4': _GROUPED}

default_cfgs = {name: _caffe2_cfg(spec, *facts, notes=_NOTES.get(name)) for name, (spec, facts) in _ENTRIES.items()}


def _create(name: str, pretrained: bool, **kwargs) -> ResNet3D:
    return build_model_with_cfg(ResNet3D, name, pretrained, pretrained_loader=load_caffe2_pretrained,
                                spec=_ENTRIES[name][0], **kwargs)


@register_model
def i3d_r50(pretrained=False, **kwargs):
    """I3D ResNet-50, 32 frames at rate 2 (Caffe2 i3d_baseline_32x2)."""
    return _create('i3d_r50', pretrained, **kwargs)


@register_model
def i3d_nl_r50(pretrained=False, **kwargs):
    """I3D ResNet-50 with 5 non-local blocks, 32x2 (Caffe2 i3d_nonlocal_32x2)."""
    return _create('i3d_nl_r50', pretrained, **kwargs)


@register_model
def c2d_r50(pretrained=False, **kwargs):
    """C2D ResNet-50 (no temporal convolutions), 32x2 (Caffe2 c2d_baseline_32x2)."""
    return _create('c2d_r50', pretrained, **kwargs)


@register_model
def c2d_nl_r50(pretrained=False, **kwargs):
    """C2D ResNet-50 with 5 non-local blocks, 32x2 (Caffe2 c2d_nonlocal_32x2)."""
    return _create('c2d_nl_r50', pretrained, **kwargs)


@register_model
def i3d_r50_8x8(pretrained=False, **kwargs):
    """I3D ResNet-50, 8 frames at rate 8 (Caffe2 i3d_baseline_8x8)."""
    return _create('i3d_r50_8x8', pretrained, **kwargs)


@register_model
def i3d_nl_r50_8x8(pretrained=False, **kwargs):
    """I3D ResNet-50 with 5 non-local blocks, 8x8 (Caffe2 i3d_nonlocal_8x8)."""
    return _create('i3d_nl_r50_8x8', pretrained, **kwargs)


@register_model
def c2d_r50_8x8(pretrained=False, **kwargs):
    """C2D ResNet-50, 8x8 (Caffe2 c2d_baseline_8x8)."""
    return _create('c2d_r50_8x8', pretrained, **kwargs)


@register_model
def c2d_nl_r50_8x8(pretrained=False, **kwargs):
    """C2D ResNet-50 with 5 non-local blocks, 8x8 (Caffe2 c2d_nonlocal_8x8)."""
    return _create('c2d_nl_r50_8x8', pretrained, **kwargs)


@register_model
def i3d_r50_128x1(pretrained=False, **kwargs):
    """I3D ResNet-50, 128 frames at rate 1, frozen BN (Caffe2 i3d_baseline_128x1)."""
    return _create('i3d_r50_128x1', pretrained, **kwargs)


@register_model
def i3d_r50_32x4(pretrained=False, **kwargs):
    """I3D ResNet-50, 32 frames at rate 4, frozen BN (Caffe2 i3d_baseline_32x4)."""
    return _create('i3d_r50_32x4', pretrained, **kwargs)


@register_model
def i3d_nl_r50_128x1(pretrained=False, **kwargs):
    """I3D ResNet-50 with 5 non-local blocks (res3's grouped in time), 128x1, frozen BN
    (Caffe2 i3d_nonlocal_128x1)."""
    return _create('i3d_nl_r50_128x1', pretrained, **kwargs)


@register_model
def i3d_nl_r50_32x4(pretrained=False, **kwargs):
    """I3D ResNet-50 with 5 non-local blocks (res3's grouped in time), 32x4, frozen BN (Caffe2 i3d_nonlocal_32x4)."""
    return _create('i3d_nl_r50_32x4', pretrained, **kwargs)


# --- what the Caffe2 converter's command line needs to know about the registered models (zoo.convert_caffe2)

def caffe2_model_names() -> List[str]:
    """The registered models whose weights come from Caffe2 pickles, sorted."""
    return [n for n in list_models() if get_pretrained_cfg(n).source_format == 'caffe2_pickle']


def caffe2_target_state_dict(model_name: str, num_classes: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The state dict of a registered model on the meta device: keys, shapes and dtypes, no memory."""
    cfg = get_pretrained_cfg(model_name)
    with torch.device('meta'):
        return ResNet3D(_ENTRIES[model_name][0], num_classes=num_classes or cfg.num_classes).state_dict()
