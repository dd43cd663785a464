"""Reading the frames a test needs from a frame folder (PIL) or a video file (PyAV), each frame once.

A source reports how many frames it decodes to; the caller asks for a set of frame indices and gets them
back resized (short side to the test scale) as uint8 RGB, so resizing happens on uint8 before any float
conversion. Anything unreadable raises ``VideoDecodeError`` with a reason meant for the failure list.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .views import ViewPlan, ViewSampler, scaled_size

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v')


class VideoDecodeError(RuntimeError):
    """A video that cannot be read; the message is the reason shown in the failure list."""


def natural_key(name: str):
    """Sort key that orders 'img_2.jpg' before 'img_10.jpg' (frame numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def resize_short_side(image: Image.Image, scale: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) with the short side resized to ``scale`` (long side as Caffe2's ScaleTransform).

    PIL's bilinear filter widens its support when downscaling (antialiased), like the ffmpeg scaler the
    Caffe2 authors used to store their videos at height 256; at the stored size it is the identity.
    """
    if image.mode != 'RGB':
        image = image.convert('RGB')
    h, w = scaled_size(image.height, image.width, scale)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image)


@dataclass
class DecodedFrames:
    frames: np.ndarray                 # (U, H, W, 3) uint8, resized, in the order of the requested indices
    source_size: Tuple[int, int]       # (H, W) of the frames before resizing
    num_decoded: int                   # frames the source actually decoded to (may differ from the estimate)


class FrameFolder:
    """A folder of extracted frames (.jpg/.jpeg/.png), in numeric order of their file names."""
    kind = 'frames'

    def __init__(self, path: str):
        self.path = path
        try:
            names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)]
        except OSError as e:
            raise VideoDecodeError(f'cannot list frame folder: {e}') from e
        if not names:
            raise VideoDecodeError(f'empty frame folder: no {"/".join(IMAGE_EXTENSIONS)} files')
        self.frame_paths = [os.path.join(path, n) for n in sorted(names, key=natural_key)]

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    def read(self, indices: Sequence[int], scale: int) -> DecodedFrames:
        frames, size = [], None
        for i in indices:
            file = self.frame_paths[i]
            try:
                with Image.open(file) as image:
                    image.load()  # PIL is lazy: force the decode here so a corrupt file fails here
                    this_size = (image.height, image.width)
                    pixels = resize_short_side(image, scale)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise VideoDecodeError(f'unreadable frame {os.path.basename(file)}: {e}') from e
            if size is None:
                size = this_size
            elif this_size != size:
                raise VideoDecodeError(f'frame {os.path.basename(file)} is {this_size}, earlier frames {size}')
            frames.append(pixels)
        return DecodedFrames(np.stack(frames), size, self.num_frames)


class VideoFile:
    """A video file decoded with PyAV, optionally resampled to a fixed frame rate.

    Frames are numbered as the decoder outputs them (Caffe2 decodes every frame and indexes that list).
    With ``fps`` set and different from the stream's rate, output frame n is the source frame shown at
    time n / fps, i.e. source index floor(n * source_fps / fps).
    """
    kind = 'file'

    def __init__(self, path: str, fps: Optional[float] = None):
        import av
        self.path = path
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoDecodeError('no video stream')
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.source_fps = Fraction(rate) if rate else None
                # Counting packets needs no decoding; the container's frame count is often absent (webm).
                self.num_source_frames = sum(1 for p in container.demux(stream) if p.size)
        except av.FFmpegError as e:
            raise VideoDecodeError(f'cannot open video: {e}') from e
        if self.num_source_frames == 0:
            raise VideoDecodeError('video stream holds no frames')
        self.fps = Fraction(fps).limit_denominator(1001) if fps else None

    def _resampling(self) -> Optional[Fraction]:
        """source frames per output frame, or None when frames are taken as decoded."""
        if self.fps is None or self.source_fps is None or self.fps == self.source_fps:
            return None
        return self.source_fps / self.fps

    def _output_count(self, num_source: int) -> int:
        step = self._resampling()
        return num_source if step is None else max(1, math.ceil(num_source / step))

    def _source_index(self, n: int) -> int:
        step = self._resampling()
        return n if step is None else int(n * step)

    @property
    def num_frames(self) -> int:
        return self._output_count(self.num_source_frames)

    def read(self, indices: Sequence[int], scale: int) -> DecodedFrames:
        import av
        wanted: Dict[int, List[int]] = {}
        for pos, n in enumerate(indices):
            wanted.setdefault(self._source_index(int(n)), []).append(pos)
        out: List[Optional[np.ndarray]] = [None] * len(indices)
        size, decoded = None, 0
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = 'AUTO'  # frame threads: most of the decode time for h264/vp9
                for decoded, frame in enumerate(container.decode(stream), start=1):
                    positions = wanted.get(decoded - 1)
                    if positions is None:
                        continue
                    image = frame.to_image()
                    if size is None:
                        size = (image.height, image.width)
                    pixels = resize_short_side(image, scale)
                    for pos in positions:
                        out[pos] = pixels
        except av.FFmpegError as e:
            raise VideoDecodeError(f'decoding failed after {decoded} frames: {e}') from e
        if decoded == 0:
            raise VideoDecodeError('no frame could be decoded')
        num_out = self._output_count(decoded)
        if any(o is None for o in out):
            # The packet count over-estimated the frames; the caller re-plans with num_decoded.
            return DecodedFrames(np.zeros((0, 1, 1, 3), np.uint8), size, num_out)
        return DecodedFrames(np.stack(out), size, num_out)


Source = Union[FrameFolder, VideoFile]


def open_source(path: str, fps: Optional[float] = None) -> Source:
    """A frame folder (directory) or a video file (by extension)."""
    if os.path.isdir(path):
        return FrameFolder(path)
    if not os.path.exists(path):
        raise VideoDecodeError('file does not exist')
    if os.path.getsize(path) == 0:
        raise VideoDecodeError('empty file')
    return VideoFile(path, fps=fps)


def load_views_frames(source: Source, sampler: ViewSampler) -> Tuple[ViewPlan, np.ndarray]:
    """Decode the union of the frames all views need, once, and the plan that cuts the views from them.

    Returns (plan, frames) with frames (U, H, W, 3) uint8 aligned with ``plan.frames``.
    """
    num = source.num_frames
    for _ in range(2):
        needed = sampler.needed_frames(num)
        got = source.read(needed, sampler.spec.scale)
        if got.num_decoded == num:
            plan = sampler.plan(num, *got.source_size)
            if got.frames.shape[1:3] != plan.size:
                raise VideoDecodeError(f'decoded frames are {got.frames.shape[1:3]}, expected {plan.size}')
            return plan, got.frames
        num = got.num_decoded  # the container's frame count was wrong: sample the frames that exist
    raise VideoDecodeError(f'frame count changes between decodes ({num} then {got.num_decoded})')
