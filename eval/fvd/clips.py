"""Video files -> one protocol clip each, decoded and prepared in DataLoader workers.

A clip is ``frames`` frames every ``step``-th, starting where the protocol says: at the first frame (read
front to back and stopped as soon as the clip is complete), centred, or at a start drawn from a generator
seeded by (protocol seed, set, the video's position in its set): the same start in every rank, worker and
resumed attempt. A video shorter than the clip is refused with the reason (no protocol pads); one that
cannot be decoded is a failure with its reason. Either is an item, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from eval.data.decode import VideoDecodeError, iter_frames, open_source, with_true_frame_count
from eval.fvd.preprocess import clip_indices, network_input
from eval.fvd.protocols import Protocol

SETS = ('real', 'fake')


@dataclass(frozen=True)
class ClipJob:
    """One video of a set: its index in the run, the set, its position in the set, its path."""
    index: int
    set: str
    position: int
    path: str


@dataclass
class Clip:
    job: ClipJob
    pixels: torch.Tensor            # (3, F, S, S) float32: the network input
    frames: Tuple[int, int]         # first and last frame index of the clip in the video


@dataclass
class ClipFailure:
    job: ClipJob
    reason: str
    kind: str                       # 'decode' (counts against --max-failed) or 'short' (refused)


def clip_rng(protocol: Protocol, job: ClipJob) -> np.random.Generator:
    return np.random.default_rng([protocol.seed, SETS.index(job.set), job.position])


def _read_from_start(source, protocol: Protocol) -> np.ndarray:
    """The first ``span`` frames, decoding stopped when they are in (ValueError: the video ends first)."""
    wanted = set(range(0, protocol.span, protocol.step))
    frames, seen = [], 0
    for i, pixels in iter_frames(source):
        seen = i + 1
        if i in wanted:
            frames.append(pixels)
        if len(frames) == protocol.frames:
            return np.stack(frames)
    raise ValueError(f'{seen} frames, the protocol needs {protocol.span}')


def read_clip(job: ClipJob, protocol: Protocol) -> Tuple[np.ndarray, int]:
    """(frames (F, H, W, 3) uint8, first frame index) of a video's clip; ValueError when it is too short,
    VideoDecodeError when it cannot be read."""
    source = open_source(job.path, fps=protocol.fps)
    if protocol.frames is None:
        raise ValueError('a protocol over every frame (frames=all) takes tensors, not files: give --frames')
    if protocol.clip == 'start':
        return _read_from_start(source, protocol), 0

    def plan_and_read(n: int):
        index = clip_indices(n, protocol, clip_rng(protocol, job))
        got = source.read(index, None)
        return got.num_decoded, (got.frames, int(index[0]))

    _, (frames, start) = with_true_frame_count(plan_and_read, source.num_frames)
    return frames, start


def prepare(job: ClipJob, protocol: Protocol) -> Union[Clip, ClipFailure]:
    try:
        frames, start = read_clip(job, protocol)
    except ValueError as e:
        return ClipFailure(job, f'{e} ({protocol.frames} frames every {protocol.step}; no protocol pads a short '
                                'video)', 'short')
    except VideoDecodeError as e:
        return ClipFailure(job, str(e), 'decode')
    except Exception as e:      # a decoder bug must not end a long run; it is listed with its type
        return ClipFailure(job, f'{type(e).__name__}: {e}', 'decode')
    pixels = network_input(torch.from_numpy(frames), protocol)
    return Clip(job, pixels, (start, start + (protocol.frames - 1) * protocol.step))


class ClipStream(torch.utils.data.IterableDataset):
    """Clips (or failures) of the jobs, in order within each worker (worker w takes every W-th job)."""

    def __init__(self, jobs: Sequence[ClipJob], protocol: Protocol):
        self.jobs = list(jobs)
        self.protocol = protocol

    def __iter__(self) -> Iterator[Union[Clip, ClipFailure]]:
        info = torch.utils.data.get_worker_info()
        jobs = self.jobs if info is None else self.jobs[info.id::info.num_workers]
        for job in jobs:
            yield prepare(job, self.protocol)


def batches(items: Iterator[Union[Clip, ClipFailure]], size: int) -> Iterator[Tuple[List[Clip], List[ClipFailure]]]:
    """Group clips into batches of ``size`` (the last may be smaller); failures travel with the next batch."""
    clips: List[Clip] = []
    failures: List[ClipFailure] = []
    for item in items:
        (clips if isinstance(item, Clip) else failures).append(item)
        if len(clips) == size:
            yield clips, failures
            clips, failures = [], []
    if clips or failures:
        yield clips, failures


def sample_videos(count: int, wanted: Optional[int], seed: int, set_name: str) -> np.ndarray:
    """Positions of the videos a set uses: all, or ``wanted`` drawn without replacement (seeded), in order."""
    if wanted is None or wanted == count:
        return np.arange(count)
    if count < wanted:
        raise ValueError(f'the {set_name} set has {count} videos; the protocol takes {wanted} (give --num-videos '
                         f'{count} or less; the number is then not the protocol\'s)')
    rng = np.random.default_rng([seed, SETS.index(set_name), 1 << 20])
    return np.sort(rng.choice(count, size=wanted, replace=False))
