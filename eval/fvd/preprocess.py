"""Frames -> the network's input under a protocol: the clip's frames, the protocol's resize, its scaling.

Three resizes, each with the exact semantics of the code it stands for (tested against hand-written
references of those semantics in tests/test_fvd_numerics.py):

* ``tf1-bilinear``: TF1 ``tf.image.resize_bilinear`` with align_corners=False and half_pixel_centers=False
  (the google-research FVD code). Output pixel ``i`` samples the input at ``i * (in / out)`` (float32), between
  ``floor`` and ``min(ceil, in - 1)``; interpolated as TF's kernel does it: along x, then y, in float32.
  PyTorch has no such mode (its bilinear uses half-pixel centres), so it is written here.
* ``torch-bilinear``: ``F.interpolate(..., mode='bilinear', align_corners=False, antialias=False)``.
* ``short-side-crop``: the short side to ``size`` (the long side ``ceil(long * size / short)``), torch
  bilinear as above, then the centre crop (offsets rounded down), as VideoGPT prepares its videos.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from eval.fvd.protocols import Protocol


def legacy_sample_points(in_size: int, out_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower, upper, lerp) per output index of TF1's legacy bilinear scaler, computed in float32 as TF does."""
    scale = np.float32(in_size) / np.float32(out_size)
    points = np.arange(out_size, dtype=np.float32) * scale
    floors = np.floor(points)
    lower = np.maximum(floors.astype(np.int64), 0)
    upper = np.minimum(np.ceil(points).astype(np.int64), in_size - 1)
    return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(points - floors)


def tf1_resize_bilinear(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., H, W, C) -> (..., height, width, C) float32, TF1 resize_bilinear(align_corners=False)."""
    x = images.float()
    y0, y1, ly = legacy_sample_points(x.shape[-3], height)
    x0, x1, lx = legacy_sample_points(x.shape[-2], width)
    dev = x.device
    y0, y1, ly, x0, x1, lx = (t.to(dev) for t in (y0, y1, ly, x0, x1, lx))
    top_rows, bottom_rows = x.index_select(-3, y0), x.index_select(-3, y1)
    lx = lx.view(-1, 1)
    top = top_rows.index_select(-2, x0)
    top = top + (top_rows.index_select(-2, x1) - top) * lx
    bottom = bottom_rows.index_select(-2, x0)
    bottom = bottom + (bottom_rows.index_select(-2, x1) - bottom) * lx
    return top + (bottom - top) * ly.view(-1, 1, 1)


def _torch_bilinear(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, H, W, C) -> (T, height, width, C) float32 by F.interpolate bilinear, align_corners=False."""
    x = frames.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode='bilinear', align_corners=False, antialias=False)
    return x.permute(0, 2, 3, 1)


def short_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """VideoGPT's target: the short side ``size``, the long side ``ceil(long * size / short)``."""
    scale = size / min(height, width)
    if height < width:
        return size, math.ceil(width * scale)
    if width < height:
        return math.ceil(height * scale), size
    return size, size


def resize_frames(frames: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """(T, H, W, 3) pixels on 0..255 (uint8 or float) -> (T, size, size, 3) float32 by the protocol's resize."""
    size = protocol.size
    if protocol.resize == 'tf1-bilinear':
        return tf1_resize_bilinear(frames, size, size)
    if protocol.resize == 'torch-bilinear':
        return _torch_bilinear(frames, size, size)
    h, w = short_side_size(frames.shape[1], frames.shape[2], size)
    resized = _torch_bilinear(frames, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return resized[:, top:top + size, left:left + size]


def scale_values(x: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """0..255 float32 -> [-1, 1] in the protocol's order of operations."""
    if protocol.scaling == '2x/255-1':
        return 2.0 * x / 255.0 - 1.0
    return x / 255.0 * 2.0 - 1.0


def network_input(frames: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """A clip's frames (T, H, W, 3) on 0..255 -> the network's (3, T, size, size) float32 input."""
    return scale_values(resize_frames(frames, protocol), protocol).permute(3, 0, 1, 2).contiguous()


def clip_start(num_frames: int, span: int, clip: str, rng: np.random.Generator) -> int:
    """The first frame of a clip of ``span`` frames in a video of ``num_frames`` (ValueError: too short)."""
    if num_frames < span:
        raise ValueError(f'{num_frames} frames, the protocol needs {span}')
    if clip == 'start':
        return 0
    if clip == 'centre':
        return (num_frames - span) // 2
    return int(rng.integers(0, num_frames - span + 1))


def clip_indices(num_frames: int, protocol: Protocol, rng: np.random.Generator) -> np.ndarray:
    """The frame indices of a video's clip under the protocol (every frame when it takes all of them)."""
    if protocol.frames is None:
        return np.arange(num_frames)
    start = clip_start(num_frames, protocol.span, protocol.clip, rng)
    return start + protocol.step * np.arange(protocol.frames)
