"""Which frames make each feature snippet: pure index arithmetic, no pixels (the crops: eval.data.crops).

Two ways of placing windows of S frames over a video of N frames, every ``stride`` frames:

- ``align='start'`` (snippets): window k covers frames [k*stride, k*stride + S).
  ``tail`` says what happens at the end of the video:
  * ``drop``: only windows that fit: floor((N - S) / stride) + 1 of them; a video of fewer than S frames
    has none and is refused (``ShortVideoError``).
  * ``pad``: the fewest windows that reach the last frame, min(ceil((N - S) / stride) + 1, ceil(N / stride))
    (at least 1); frames past the end repeat the last frame. With S = stride = 16: ceil(N / 16).
  * ``loop``: the same windows as ``pad``; frames past the end wrap to the start (frame N + j is frame j).
  * ``zero``: the same windows as ``pad``; frames past the end are zero (index -1).
- ``align='centre'`` (dense): window k is centred on frame c = k*stride, covering [c - S//2, c - S//2 + S)
  (S = 21: [c - 10, c + 10]); one window per stride frames, ceil(N / stride) of them. ``tail``:
  ``zero`` frames outside the video are zero (MS-TCN's padding), ``pad`` repeats the first/last frame,
  ``loop`` wraps, ``drop`` keeps only the windows wholly inside the video.

A plan is an (K, S) array of frame indices, -1 marking a zero frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

TAILS = ('drop', 'pad', 'loop', 'zero')
ALIGNS = ('start', 'centre')
ZERO_FRAME = -1


class ShortVideoError(ValueError):
    """The video has too few frames for even one snippet under the chosen tail rule."""


@dataclass(frozen=True)
class SnippetPlan:
    """The frames of every snippet of one video.

    frames: (K, S) int64 frame indices, ZERO_FRAME (-1) where the network sees a zero frame.
    centres: (K,) the frame each window is centred on (align 'centre'), else the first frame of the window.
    """
    num_frames: int
    snippet: int
    stride: int
    tail: str
    align: str
    frames: np.ndarray
    centres: np.ndarray

    @property
    def num_snippets(self) -> int:
        return int(self.frames.shape[0])

    def span(self, k: int) -> Tuple[int, int]:
        """(first, last) frame of snippet k in the video's own numbering, before padding or wrapping:
        the window [start, start + S - 1] clipped to the video."""
        start = int(self.centres[k]) - (self.snippet // 2 if self.align == 'centre' else 0)
        return max(start, 0), min(start + self.snippet, self.num_frames) - 1

    def padded(self, k: int) -> int:
        """How many of snippet k's frames lie outside the video (repeated, wrapped or zero)."""
        first, last = self.span(k)
        return self.snippet - (last - first + 1)


def snippet_count(num_frames: int, snippet: int, stride: int, tail: str, align: str = 'start',
                  lookahead: int = 0) -> int:
    """K, the number of snippets (0 when the video is too short under ``drop``).

    ``lookahead`` (``drop`` only): frames a window needs after its last one before it counts as whole.
    v-iashin/video_features reads S + 1 frames per window (for its optical-flow pairs), so its RGB windows
    number floor((N - 1 - S) / stride) + 1: lookahead 1 reproduces that count.
    """
    _check(num_frames, snippet, stride, tail, align)
    n, s = num_frames - (lookahead if tail == 'drop' else 0), snippet
    if align == 'centre':
        if tail == 'drop':
            lo, hi = s // 2, n - s + s // 2          # the centres whose window fits inside the video
            return 0 if hi < lo else hi // stride - (-(-lo // stride)) + 1
        return -(-n // stride)
    if tail == 'drop':
        return 0 if n < s else (n - s) // stride + 1
    return max(1, min(-(-max(n - s, 0) // stride) + 1, -(-n // stride)))


def plan_snippets(num_frames: int, snippet: int, stride: int, tail: str = 'drop', align: str = 'start',
                  lookahead: int = 0) -> SnippetPlan:
    """The frame indices of every snippet (see the module docstring for the rules)."""
    count = snippet_count(num_frames, snippet, stride, tail, align, lookahead)
    if count == 0:
        raise ShortVideoError(
            f'{num_frames} frames is shorter than one {snippet}-frame snippet and --tail drop keeps only '
            f'whole snippets (at least {snippet + lookahead} frames needed); --tail pad or --tail loop keeps '
            'such a video')
    n, s = num_frames, snippet
    if align == 'start':
        centres = np.arange(count, dtype=np.int64) * stride
        raw = centres[:, None] + np.arange(s, dtype=np.int64)[None, :]
    else:
        centres = np.arange(0, n, stride, dtype=np.int64)
        if tail == 'drop':
            centres = centres[(centres >= s // 2) & (centres - s // 2 + s <= n - lookahead)]
        raw = centres[:, None] - s // 2 + np.arange(s, dtype=np.int64)[None, :]
    if tail == 'loop':
        frames = raw % n
    elif tail == 'pad':
        frames = np.clip(raw, 0, n - 1)
    else:  # drop (nothing outside) or zero
        frames = np.where((raw >= 0) & (raw < n), raw, ZERO_FRAME)
    return SnippetPlan(n, s, stride, tail, align, frames.astype(np.int64), centres)


def _check(num_frames: int, snippet: int, stride: int, tail: str, align: str) -> None:
    if tail not in TAILS:
        raise ValueError(f'tail must be one of {TAILS}, got {tail!r}')
    if align not in ALIGNS:
        raise ValueError(f'align must be one of {ALIGNS}, got {align!r}')
    if snippet < 1 or stride < 1:
        raise ValueError(f'snippet and stride must be positive, got {snippet} and {stride}')
    if num_frames < 1:
        raise ShortVideoError('the video has no frames')


def last_use(plan: SnippetPlan) -> np.ndarray:
    """(N,) the last snippet that needs each frame (-1: none): a streaming decoder frees frame f after it."""
    out = np.full(plan.num_frames, -1, dtype=np.int64)
    for k in range(plan.num_snippets):
        row = plan.frames[k]
        out[row[row >= 0]] = k
    return out




def snippet_seconds(first: int, last: int, fps: float) -> Tuple[float, float]:
    """(start, end) time in seconds of frames first..last: frame i is shown from i / fps to (i + 1) / fps."""
    if not fps or not math.isfinite(fps):
        return float('nan'), float('nan')
    return first / fps, (last + 1) / fps
