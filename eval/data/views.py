"""Which views a video yields: temporal clip frame indices and spatial crop boxes of the multi-view test.

Pure index arithmetic, no pixels: ``ViewSampler`` turns a ``ViewSpec`` (frames, sampling rate, clips,
crops, test scale, crop size) and a video's decoded frame count and frame size into the frames to decode
and the boxes to cut. The formulas reproduce the Caffe2 video-nonlocal-net test
(``caffe2_customized_ops/video/customized_video_io.cc``); where we deliberately differ, the function says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from eval.data.crops import Crop, crop_boxes


@dataclass(frozen=True)
class ViewSpec:
    """The geometry of one multi-view test: T frames at a rate, K clips x S crops of a resized video."""
    num_frames: int
    sampling_rate: int
    spatial_crops: int
    temporal_clips: int
    scale: int          # short side the frames are resized to
    crop_size: int      # side of each square crop

    def __post_init__(self):
        for name in ('num_frames', 'sampling_rate', 'spatial_crops', 'temporal_clips', 'scale', 'crop_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.crop_size > self.scale:
            raise ValueError(f'crop {self.crop_size} is larger than the short side {self.scale} it is cut from')

    @property
    def num_views(self) -> int:
        return self.spatial_crops * self.temporal_clips

    @property
    def name(self) -> str:
        return f'{self.spatial_crops}x{self.temporal_clips}'

    @classmethod
    def from_cfg(cls, cfg, views: Tuple[int, int], frames: Optional[int] = None, rate: Optional[int] = None,
                 scale: Optional[int] = None, crop: Optional[int] = None) -> 'ViewSpec':
        """Geometry from a model's VideoPretrainedCfg, fields overridable.

        A single view (1x1) is the training-size centre crop (cfg.crop_size, 224); any multi-view test cuts
        cfg.test_crop_size (256 for the Caffe2 fully-convolutional test: tools/test_net_video.py sets
        CROP_SIZE = JITTER_SCALES[0] when TEST_FULLY_CONV).
        """
        spatial, temporal = views
        if crop is None:
            crop = cfg.crop_size if (spatial, temporal) == (1, 1) else cfg.test_crop_size
        return cls(num_frames=frames or cfg.num_frames, sampling_rate=rate or cfg.sampling_rate,
                   spatial_crops=spatial, temporal_clips=temporal, scale=scale or cfg.test_scale, crop_size=crop)


# ----------------------------------------------------------------------------------------------- time

def caffe2_clip_start(num_decoded: int, clip: int, num_clips: int) -> int:
    """Start frame of temporal clip ``clip`` of ``num_clips``: floor(N * k / K).

    Reproduces DecodeClipFromVideoFileFlex: ``frame_gaps = (float)N / (float)sample_times;
    start = ((int)(frame_gaps * k)) % N`` in float32, so we compute in float32 too. For the clip counts
    used in practice it equals the exact floor(N*k/K); the tests check both on hand-worked cases.
    """
    if num_decoded < 1:
        raise ValueError('a video needs at least one decoded frame')
    gap = np.float32(num_decoded) / np.float32(num_clips)
    return int(np.float32(gap * np.float32(clip))) % num_decoded


def centre_clip_start(num_decoded: int, num_frames: int, sampling_rate: int) -> int:
    """Start of the single centre clip: the middle of the range Caffe2 draws training clips from.

    Caffe2 jitters a training clip's start uniformly over [0, N - T*rate] (DecodeClipFromVideoFileFlex with
    start_frm < 0); the centre clip starts at the middle of that range, (N - T*rate) // 2, so its T*rate
    frame span is centred in the video (with the odd frame, if any, left at the end). A video shorter than
    the span starts at 0 and wraps, as the Caffe2 decoder does. (Caffe2's own formula with K = 1 gives
    start 0, its "clip1" sanity number; the single-view protocol asks for the centre clip.)
    """
    return max(num_decoded - num_frames * sampling_rate, 0) // 2


def clip_frame_indices(num_decoded: int, num_frames: int, sampling_rate: int, num_clips: int) -> np.ndarray:
    """(K, T) indices into the N decoded frames: frame j of clip k is (start_k + j * rate) mod N.

    The modulo is Caffe2's "periodic sampling" (``i = i % sampledFrames.size()``): a short video repeats.
    K = 1 uses the centre clip, K > 1 the Caffe2 starts floor(N*k/K).
    """
    if num_clips == 1:
        starts = [centre_clip_start(num_decoded, num_frames, sampling_rate)]
    else:
        starts = [caffe2_clip_start(num_decoded, k, num_clips) for k in range(num_clips)]
    return clips_from_starts(starts, num_decoded, num_frames, sampling_rate)


def clips_from_starts(starts, num_decoded: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """(K, T) indices of the clips starting at ``starts``: frame j of a clip is (start + j * rate) mod N, so a
    video shorter than the clip's span repeats (Caffe2's periodic sampling, test and training alike)."""
    offsets = np.arange(num_frames, dtype=np.int64) * sampling_rate
    return (np.asarray(starts, dtype=np.int64)[:, None] + offsets[None, :]) % num_decoded


# ---------------------------------------------------------------------------------------------- space

def scaled_size(height: int, width: int, scale: int) -> Tuple[int, int]:
    """(H, W) after resizing the short side to ``scale``, keeping the aspect ratio.

    The long side follows Caffe2's ScaleTransform: ``ratio = (float)side / (float)short;
    new = (int)((float)long * ratio)`` (float32, truncated). The short side is pinned to exactly ``scale``:
    the same float32 truncation gives scale - 1 for some sizes (e.g. 23 -> 223 for 224), which Caffe2 never
    met because its videos were stored at height 256 already, and which would make a full-height crop fail.
    """
    ratio = np.float32(scale) / np.float32(min(height, width))
    if height > width:
        return int(np.float32(np.float32(height) * ratio)), scale
    return scale, int(np.float32(np.float32(width) * ratio))


# ------------------------------------------------------------------------------------------- sampler

@dataclass(frozen=True)
class ViewPlan:
    """Everything needed to cut the views of one video out of its decoded frames.

    ``frames`` are the distinct decoded-frame indices to read, sorted; ``clip_index`` (K, T) points into
    ``frames`` (not into the video), so frames shared between clips are decoded and stored once.
    View v is clip ``v // S`` cut with box ``v % S``.
    """
    num_decoded: int
    frames: np.ndarray          # (U,) sorted distinct decoded-frame indices
    clip_index: np.ndarray      # (K, T) positions into ``frames``
    size: Tuple[int, int]       # (H, W) after resizing
    boxes: Tuple[Crop, ...]     # S crops, Caffe2 geometry (eval.data.crops)

    @property
    def num_views(self) -> int:
        return self.clip_index.shape[0] * len(self.boxes)

    def clip_frames(self, clip: int) -> np.ndarray:
        """The decoded-frame indices of one clip (for reports and tests)."""
        return self.frames[self.clip_index[clip]]


class ViewSampler:
    """Plans the views of a video from its decoded frame count and frame size (``ViewSpec`` geometry)."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def frame_indices(self, num_decoded: int) -> np.ndarray:
        s = self.spec
        return clip_frame_indices(num_decoded, s.num_frames, s.sampling_rate, s.temporal_clips)

    def needed_frames(self, num_decoded: int) -> np.ndarray:
        """The union of all clips' frames: what the decoder must produce, each once."""
        return np.unique(self.frame_indices(num_decoded))

    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        return scaled_size(height, width, self.spec.scale)

    def boxes(self, height: int, width: int) -> List[Crop]:
        """Crop boxes of a frame of the given *original* size, in resized coordinates: the Caffe2 multi-crop
        test's S crops (eval.data.crops, geometry 'caffe2')."""
        h, w = self.resized_size(height, width)
        return crop_boxes(h, w, self.spec.crop_size, 'caffe2', self.spec.spatial_crops)

    def plan(self, num_decoded: int, height: int, width: int) -> ViewPlan:
        indices = self.frame_indices(num_decoded)
        frames, inverse = np.unique(indices, return_inverse=True)
        size = self.resized_size(height, width)
        return ViewPlan(num_decoded, frames, inverse.reshape(indices.shape), size, tuple(self.boxes(height, width)))
