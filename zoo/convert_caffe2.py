"""Command line: convert a Caffe2 video-nonlocal-net checkpoint for a registered model, strictly.

    python -m zoo.convert_caffe2 i3d_baseline_32x2_IN_pretrain_400k.pkl i3d_r50.pth [--model i3d_r50]
    python -m zoo.convert_caffe2 i3d_baseline_32x2_IN_pretrain_400k.pkl --hf i3d_r50_hf/   # timm's sharing folder
    python -m zoo.convert_caffe2 --download i3d_r50
    python -m zoo.convert_caffe2 --sha256 FILE

The conversion and the command line's body are converters.caffe2's; this module hands it the registry's
Caffe2 entries (converters never import the zoo).
"""
from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

import torch

from converters import caffe2

from ._builder import create_model, load_weights
from ._registry import get_pretrained_cfg
from .video_nonlocal_net import caffe2_model_names, caffe2_target_state_dict


def save_hf_folder(model_name: str, state_dict: Dict[str, torch.Tensor], folder: str) -> None:
    """timm's sharing folder of a registered model with these weights: ``timm.models.save_for_hf`` writes
    config.json (the entry's pretrained config: timm's keys and the zoo's video fields) and model.safetensors."""
    from timm.models import save_for_hf
    model = create_model(model_name)
    load_weights(model, state_dict, source=f'converted weights of {model_name}')
    save_for_hf(model, folder, safe_serialization=True)


def catalog() -> caffe2.ModelCatalog:
    """The registered models whose weights are Caffe2 pickles, as the converter's command line needs them."""
    return caffe2.ModelCatalog(names=caffe2_model_names(), target_state_dict=caffe2_target_state_dict,
                               pretrained_cfg=get_pretrained_cfg, save_hf_folder=save_hf_folder)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return caffe2.main(argv, catalog())


if __name__ == '__main__':
    sys.exit(main())
