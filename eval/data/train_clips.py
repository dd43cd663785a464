"""The train mode of the data pipeline: the Caffe2 recipe's random clip, scale, crop and flip, and the order
in which an epoch visits the videos, split into the micro-batches of each rank.

Every random choice for video i in epoch e is drawn from its own generator, seeded by (seed, e, i), and the
epoch's order from one seeded by (seed, e): a clip does not depend on the number of DataLoader workers or
of ranks, and a resumed run draws exactly what the interrupted one would have. Decoding is eval.data.decode's
(frame folders or PyAV), so training and testing read the same pixels.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from eval.data.records import VideoRecord
from eval.data.decode import VideoDecodeError, open_source, with_true_frame_count
from eval.data.views import clips_from_starts

# Caffe2 training jitter (cfg.TRAIN.JITTER_SCALES [256, 320] for the 224 crop, TRAIN.CROP_SIZE 224): the
# short side is resized to a random scale in this range, then a random square crop is cut.
CAFFE2_CROP = 224
CAFFE2_JITTER_SCALES = (256, 320)
# A video that cannot be decoded is replaced by the next ones in index order, at most this many.
MAX_SUBSTITUTES = 10
# Stream tags, so that the order's and the samples' seed sequences never coincide.
_ORDER_STREAM, _SAMPLE_STREAM = 0, 1


@dataclass(frozen=True)
class TrainSpec:
    """Geometry of a training clip: T frames at a rate, short side in [min_scale, max_scale], a square crop."""
    num_frames: int
    sampling_rate: int
    min_scale: int = CAFFE2_JITTER_SCALES[0]
    max_scale: int = CAFFE2_JITTER_SCALES[1]
    crop_size: int = CAFFE2_CROP
    flip_prob: float = 0.5

    def __post_init__(self):
        for name in ('num_frames', 'sampling_rate', 'min_scale', 'crop_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.max_scale < self.min_scale:
            raise ValueError(f'scale range [{self.min_scale}, {self.max_scale}] is empty')
        if self.crop_size > self.min_scale:
            raise ValueError(f'crop {self.crop_size} is larger than the smallest short side {self.min_scale}')
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f'flip probability must be in [0, 1], got {self.flip_prob}')

    @classmethod
    def from_cfg(cls, cfg, frames: Optional[int] = None, rate: Optional[int] = None, crop: Optional[int] = None,
                 scales: Optional[Tuple[int, int]] = None) -> 'TrainSpec':
        """The model's clip (frames, rate, training crop); the scale range is Caffe2's [256, 320] for the 224
        crop, in proportion for other crops (a small CI crop of 56 jitters over [64, 80])."""
        crop = crop or cfg.crop_size
        if scales is None:
            scales = tuple(round(crop * s / CAFFE2_CROP) for s in CAFFE2_JITTER_SCALES)
        return cls(num_frames=frames or cfg.num_frames, sampling_rate=rate or cfg.sampling_rate,
                   min_scale=scales[0], max_scale=scales[1], crop_size=crop)


@dataclass(frozen=True)
class ClipDraw:
    """The random choices of one training clip: its first frame, short side, crop corner and mirror."""
    start: int
    scale: int
    top: int
    left: int
    flip: bool


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of video ``index``'s draws in ``epoch``."""
    return np.random.default_rng([seed, epoch, _SAMPLE_STREAM, index])


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch visits the videos in: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_samples)


def draw_start(rng: np.random.Generator, num_decoded: int, num_frames: int, sampling_rate: int) -> int:
    """Uniform over [0, N - T*rate] (Caffe2 DecodeClipFromVideoFileFlex with start_frm < 0); 0 when the video
    is shorter than the clip's span, which then wraps around (clips_from_starts)."""
    return int(rng.integers(0, max(num_decoded - num_frames * sampling_rate, 0) + 1))


def draw_scale(rng: np.random.Generator, spec: TrainSpec) -> int:
    """Uniform over the integers [min_scale, max_scale]."""
    return int(rng.integers(spec.min_scale, spec.max_scale + 1))


def draw_crop(rng: np.random.Generator, height: int, width: int, crop: int) -> Tuple[int, int]:
    """(top, left) uniform over every position of a crop x crop square in a height x width frame."""
    return int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))


def draw_flip(rng: np.random.Generator, probability: float) -> bool:
    return bool(rng.random() < probability)


def load_train_clip(path: str, spec: TrainSpec, rng_factory, fps: Optional[float] = None
                    ) -> Tuple[np.ndarray, ClipDraw]:
    """uint8 (T, crop, crop, 3) clip of a video and the draws that made it.

    ``rng_factory()`` gives a fresh generator for the video; the start and scale are drawn before decoding
    (the decoder resizes to the drawn scale), the crop and flip after (the resized size is known then). If
    the decoded frame count differs from the container's estimate, everything is drawn again for the true
    count, from a fresh generator, so the result depends only on the video and the seed.
    """
    source = open_source(path, fps=fps)

    def draw_and_read(num: int):
        rng = rng_factory()
        start = draw_start(rng, num, spec.num_frames, spec.sampling_rate)
        scale = draw_scale(rng, spec)
        got = source.read(clips_from_starts([start], num, spec.num_frames, spec.sampling_rate)[0], scale)
        return got.num_decoded, (rng, start, scale, got.frames)

    _, (rng, start, scale, frames) = with_true_frame_count(draw_and_read, source.num_frames)
    top, left = draw_crop(rng, frames.shape[1], frames.shape[2], spec.crop_size)
    flip = draw_flip(rng, spec.flip_prob)
    clip = frames[:, top:top + spec.crop_size, left:left + spec.crop_size]
    if flip:
        clip = clip[:, :, ::-1]
    return np.ascontiguousarray(clip), ClipDraw(start, scale, top, left, flip)


class TrainClipDataset(torch.utils.data.Dataset):
    """Index i -> (uint8 clip (T, c, c, 3), label, i) for the current epoch (``set_epoch``).

    Every record must have a video and a label (the caller drops missing videos and says so). A video that
    fails to decode is replaced by the next one in index order (drawn with that one's generator), with a
    warning on stderr; after MAX_SUBSTITUTES failures in a row the error names them all.
    """

    def __init__(self, records: Sequence[VideoRecord], spec: TrainSpec, seed: int = 0, fps: Optional[float] = None):
        self.records = list(records)
        for r in self.records:
            if r.path is None or r.label < 0:
                raise ValueError(f'training video {r.video_id}: {r.missing or "no label"}')
        self.spec = spec
        self.seed = seed
        self.fps = fps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def clip(self, index: int) -> Tuple[np.ndarray, ClipDraw]:
        record = self.records[index]
        return load_train_clip(record.path, self.spec, lambda: sample_generator(self.seed, self.epoch, index),
                               fps=self.fps)

    def __getitem__(self, index: int):
        errors = []
        for k in range(min(MAX_SUBSTITUTES, len(self.records))):
            j = (index + k) % len(self.records)
            try:
                clip, _ = self.clip(j)
            except VideoDecodeError as e:
                errors.append(f'{self.records[j].path}: {e}')
                print(f'warning: cannot decode training video {self.records[j].path} ({e}); '
                      'taking the next one instead', file=sys.stderr)
                continue
            return torch.from_numpy(clip), self.records[j].label, j
        raise VideoDecodeError('no decodable training video among ' + '; '.join(errors))


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is cut: ``per_rank`` clips per forward pass, on ``world_size`` ranks, accumulated
    over ``accum_steps`` passes before each optimizer step. Micro-batch (a, r) of a step, for accumulation
    pass a on rank r, holds positions [(a * world + r) * b, (a * world + r + 1) * b) of the step's slice of
    the epoch order, so every clip of the global batch is seen exactly once whatever the split."""
    per_rank: int
    world_size: int = 1
    accum_steps: int = 1

    def __post_init__(self):
        for name in ('per_rank', 'world_size', 'accum_steps'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size * self.accum_steps

    def steps_per_epoch(self, num_samples: int) -> int:
        """Optimizer steps per epoch; the last incomplete global batch is dropped (every step sees the same
        number of clips, so the loss scale never changes within a run)."""
        return num_samples // self.global_batch

    def micro_batch(self, order: np.ndarray, step: int, accum: int, rank: int) -> List[int]:
        start = step * self.global_batch + (accum * self.world_size + rank) * self.per_rank
        return [int(i) for i in order[start:start + self.per_rank]]


class RankBatchSampler(torch.utils.data.Sampler):
    """The micro-batches of one rank for one epoch, from optimizer step ``start_step`` on (a resume)."""

    def __init__(self, plan: BatchPlan, num_samples: int, seed: int, epoch: int, rank: int, start_step: int = 0):
        self.plan, self.rank, self.start_step = plan, rank, start_step
        self.order = epoch_order(num_samples, seed, epoch)
        self.steps = plan.steps_per_epoch(num_samples)

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start_step, self.steps):
            for accum in range(self.plan.accum_steps):
                yield self.plan.micro_batch(self.order, step, accum, self.rank)

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0) * self.plan.accum_steps
