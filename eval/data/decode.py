"""Reading the frames a test needs from a frame folder (JPEG/PNG) or a video file (PyAV), each frame once.

A source reports how many frames it decodes to; the caller asks for a set of frame indices and gets them
back resized (short side to the test scale) as uint8 RGB, so resizing happens on uint8 before any float
conversion. Anything unreadable raises ``VideoDecodeError`` with a reason meant for the failure list.

Fast path (``DecodeOptions``; measured by ``benchmarks/bench_data.py``). The defaults are exact: they
give the same pixels as decoding with PIL and resizing with ``resize_short_side``.

- JPEG frames are decoded with simplejpeg when it is installed (libjpeg-turbo, the same library and
  settings as PIL, so bit-identical output) straight into the output array; PIL is the fallback for a
  missing simplejpeg, PNG/BMP frames, CMYK JPEGs and any file simplejpeg rejects (PIL then has the last
  word on whether the frame is unreadable).
- Video frames are converted by libswscale straight to an RGB24 ndarray (no PIL image, no extra copy),
  with the decoder's frame threads on.
- Opt-in and approximate: ``jpeg_draft`` (DCT-domain downscale by a power of 2 before the resize, for
  frames at least twice the test scale) and ``video_resize='swscale'`` (libswscale bilinear resize in
  YUV during the RGB conversion). Both are faster on large frames and differ from the exact path by
  about one grey level on average (measured by benchmarks/bench_data.py); they change nothing when no resize is
  needed.
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from PIL import Image

from eval.data.views import ViewPlan, ViewSampler, scaled_size

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v')
_JPEG_EXTENSIONS = ('.jpg', '.jpeg')
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
T = TypeVar('T')


class VideoDecodeError(RuntimeError):
    """A video that cannot be read; the message is the reason shown in the failure list."""


@dataclass(frozen=True)
class DecodeOptions:
    """How frames are decoded and resized; the defaults give exactly the PIL reference pixels.

    jpeg_decoder: 'auto' (simplejpeg when importable, else PIL), 'simplejpeg' (same, the fallback still
        applies file by file) or 'pil'.
    jpeg_draft: let libjpeg decode at 1/2, 1/4 or 1/8 size (the largest reduction that stays at or above
        the resized size) before the bilinear resize. Approximate; off by default.
    video_threads: PyAV ``thread_type`` ('AUTO' = frame threads where the codec has them, else slices;
        'NONE' decodes on the calling thread).
    video_resize: 'pil' (RGB24 then PIL bilinear, exact) or 'swscale' (resize inside the RGB conversion,
        approximate, faster when the video is larger than the test scale).
    """
    jpeg_decoder: str = 'auto'
    jpeg_draft: bool = False
    video_threads: str = 'AUTO'
    video_resize: str = 'pil'

    def __post_init__(self):
        if self.jpeg_decoder not in ('auto', 'simplejpeg', 'pil'):
            raise ValueError(f'jpeg_decoder must be auto, simplejpeg or pil, got {self.jpeg_decoder!r}')
        if self.video_resize not in ('pil', 'swscale'):
            raise ValueError(f'video_resize must be pil or swscale, got {self.video_resize!r}')
        if self.video_threads.upper() not in ('AUTO', 'FRAME', 'SLICE', 'NONE'):
            raise ValueError(f'video_threads must be AUTO, FRAME, SLICE or NONE, got {self.video_threads!r}')


EXACT = DecodeOptions()      # what open_source uses when given no options


def natural_key(name: str):
    """Sort key that orders 'img_2.jpg' before 'img_10.jpg' (frame numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def _simplejpeg():
    """The simplejpeg module, or None. Imported on each call (a dict lookup once loaded) so that a test
    can hide it."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _to_rgb_array(image: Image.Image, height: int, width: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) of ``image``, bilinear-resized when its size differs."""
    if image.mode != 'RGB':
        image = image.convert('RGB')
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image)


def resize_short_side(image: Image.Image, scale: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) with the short side resized to ``scale`` (long side as Caffe2's ScaleTransform).

    PIL's bilinear filter widens its support when downscaling (antialiased), like the ffmpeg scaler the
    Caffe2 authors used to store their videos at height 256; at the stored size it is the identity.
    This is the reference every decode path is compared with.
    """
    return _to_rgb_array(image, *scaled_size(image.height, image.width, scale))


def _target_size(height: int, width: int, scale: Optional[int]) -> Tuple[int, int]:
    """(H, W) a frame of this size is resized to: short side to ``scale``, or its stored size for None."""
    return (height, width) if scale is None else scaled_size(height, width, scale)


def draft_reduction(height: int, width: int, target_height: int, target_width: int) -> int:
    """1, 2, 4 or 8: the largest power-of-2 JPEG reduction that keeps the frame at least the target size.

    The same rule as PIL's ``Image.draft`` (scale = min(W // w, H // h), rounded down to a power of 2), so
    that the simplejpeg and PIL draft paths decode at the same intermediate size.
    """
    ratio = min(width // max(target_width, 1), height // max(target_height, 1))
    return next(f for f in (8, 4, 2, 1) if ratio >= f)


@dataclass
class DecodedFrames:
    frames: np.ndarray                 # (U, H, W, 3) uint8, resized, in the order of the requested indices
    source_size: Tuple[int, int]       # (H, W) of the frames before resizing
    num_decoded: int                   # frames the source actually decoded to (may differ from the estimate)


def _decode_jpeg_simplejpeg(sj, data: bytes, scale: int, draft: bool,
                            slot: Optional[np.ndarray]) -> Optional[Tuple[Tuple[int, int], np.ndarray]]:
    """(source size, resized frame) or None where PIL must decode (not a plain YCbCr/grey JPEG)."""
    height, width, colorspace, _ = sj.decode_jpeg_header(data)
    if colorspace not in ('YCbCr', 'Gray'):
        return None  # CMYK/YCCK: PIL's own colour conversion is the reference
    h, w = _target_size(height, width, scale)
    if (h, w) == (height, width):
        # Frames stored at the test scale (Kinetics at height 256): decode straight into the output.
        buffer = slot if slot is not None and slot.shape == (h, w, 3) else None
        pixels = sj.decode_jpeg(data, colorspace='RGB', buffer=buffer)
        return (height, width), pixels
    kwargs = {}
    if draft:
        f = draft_reduction(height, width, h, w)
        if f > 1:
            kwargs = {'min_height': -(-height // f), 'min_width': -(-width // f)}
    pixels = sj.decode_jpeg(data, colorspace='RGB', **kwargs)
    return (height, width), _to_rgb_array(Image.fromarray(pixels), h, w)


def _decode_pil(file: str, scale: int, draft: bool) -> Tuple[Tuple[int, int], np.ndarray]:
    with Image.open(file) as image:
        size = (image.height, image.width)
        h, w = _target_size(*size, scale)
        if draft and image.format == 'JPEG' and image.mode == 'RGB' and (h, w) != size:
            image.draft('RGB', (w, h))
        image.load()  # PIL is lazy: force the decode here so a corrupt file fails here
        # The target comes from the stored size: a drafted image is rounded up, its aspect may be off by one.
        return size, _to_rgb_array(image, h, w)


def decode_jpeg_bytes(data: bytes, scale: Optional[int], name: str) -> Tuple[Tuple[int, int], np.ndarray]:
    """(source size, RGB frame) of one JPEG file's bytes, decoded as a frame folder's JPEG is (EXACT options:
    simplejpeg, PIL where it must; no draft), short side resized to ``scale``."""
    sj = _simplejpeg()
    if sj is not None:
        try:
            got = _decode_jpeg_simplejpeg(sj, data, scale, False, None)
            if got is not None:
                return got
        except ValueError:
            pass  # simplejpeg is stricter than PIL (warnings are errors): PIL decides
    try:
        return _decode_pil(io.BytesIO(data), scale, False)
    except _PIL_ERRORS as e:
        raise VideoDecodeError(f'unreadable {name}: {e}') from e


class FrameFolder:
    """A folder of extracted frames (.jpg/.jpeg/.png/.bmp), in numeric order of their file names."""
    kind = 'frames'

    def __init__(self, path: str, options: Optional[DecodeOptions] = None):
        self.path = path
        self.options = options if options is not None else EXACT
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

    def _decode(self, file: str, scale: int, sj, slot: Optional[np.ndarray]):
        draft = self.options.jpeg_draft
        if sj is not None and file.lower().endswith(_JPEG_EXTENSIONS):
            try:
                with open(file, 'rb') as f:
                    data = f.read()
                got = _decode_jpeg_simplejpeg(sj, data, scale, draft, slot)
                if got is not None:
                    return got
            except (OSError, ValueError):
                pass  # simplejpeg is stricter than PIL (warnings are errors): PIL decides
        return _decode_pil(file, scale, draft)

    def read(self, indices: Sequence[int], scale: Optional[int]) -> DecodedFrames:
        """The frames at ``indices``, short side resized to ``scale`` (None: at their stored size)."""
        sj = _simplejpeg() if self.options.jpeg_decoder != 'pil' else None
        out: Optional[np.ndarray] = None
        size = None
        first: Dict[int, int] = {}
        for pos, i in enumerate(indices):
            i = int(i)
            if i in first:
                out[pos] = out[first[i]]
                continue
            file = self.frame_paths[i]
            try:
                this_size, pixels = self._decode(file, scale, sj, None if out is None else out[pos])
            except _PIL_ERRORS as e:
                raise VideoDecodeError(f'unreadable frame {os.path.basename(file)}: {e}') from e
            if size is None:
                size = this_size
                out = np.empty((len(indices),) + pixels.shape, np.uint8)
            elif this_size != size:
                raise VideoDecodeError(f'frame {os.path.basename(file)} is {this_size}, earlier frames {size}')
            if not np.may_share_memory(pixels, out):  # simplejpeg wrote it in place already
                out[pos] = pixels
            first[i] = pos
        if out is None:
            out = np.zeros((0, 1, 1, 3), np.uint8)
        return DecodedFrames(out, size, self.num_frames)


class VideoFile:
    """A video file decoded with PyAV, optionally resampled to a fixed frame rate.

    Frames are numbered as the decoder outputs them (Caffe2 decodes every frame and indexes that list).
    With ``fps`` set and different from the stream's rate, output frame n is the source frame shown at
    time n / fps, i.e. source index floor(n * source_fps / fps).

    The whole stream is decoded, without seeking: the 3x10 test needs frames from the first to the last
    (the last clips wrap around to the start), and decoding to the end is what verifies the frame count
    the views were planned with. Frames nobody asked for are decoded but never converted to RGB.
    """
    kind = 'file'

    def __init__(self, path: str, fps: Optional[float] = None, options: Optional[DecodeOptions] = None):
        import av
        self.path = path
        self.options = options if options is not None else EXACT
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

    def _convert(self, frame, height: int, width: int) -> np.ndarray:
        if (frame.height, frame.width) == (height, width):
            return frame.to_ndarray(format='rgb24')   # the same libswscale conversion to_image() does
        if self.options.video_resize == 'swscale':
            return frame.to_ndarray(format='rgb24', width=width, height=height, interpolation='BILINEAR')
        return _to_rgb_array(Image.fromarray(frame.to_ndarray(format='rgb24')), height, width)

    def read(self, indices: Sequence[int], scale: Optional[int]) -> DecodedFrames:
        """The frames at ``indices``, short side resized to ``scale`` (None: at their stored size)."""
        import av
        wanted: Dict[int, List[int]] = {}
        for pos, n in enumerate(indices):
            wanted.setdefault(self._source_index(int(n)), []).append(pos)
        out: Optional[np.ndarray] = None
        filled = 0
        size, decoded = None, 0
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = self.options.video_threads.upper()
                for decoded, frame in enumerate(container.decode(stream), start=1):
                    positions = wanted.get(decoded - 1)
                    if positions is None:
                        continue
                    if size is None:
                        size = (frame.height, frame.width)
                        target = _target_size(*size, scale)
                        out = np.empty((len(indices),) + target + (3,), np.uint8)
                    elif (frame.height, frame.width) != size:
                        raise VideoDecodeError(f'frame {decoded - 1} is {(frame.height, frame.width)}, '
                                               f'earlier frames {size}')
                    pixels = self._convert(frame, *target)
                    for pos in positions:
                        out[pos] = pixels
                    filled += len(positions)
        except av.FFmpegError as e:
            raise VideoDecodeError(f'decoding failed after {decoded} frames: {e}') from e
        if decoded == 0:
            raise VideoDecodeError('no frame could be decoded')
        num_out = self._output_count(decoded)
        if filled < len(indices):
            # The packet count over-estimated the frames; the caller re-plans with num_decoded.
            return DecodedFrames(np.zeros((0, 1, 1, 3), np.uint8), size, num_out)
        return DecodedFrames(out, size, num_out)


Source = Union[FrameFolder, VideoFile]


def open_source(path: str, fps: Optional[float] = None, options: Optional[DecodeOptions] = None) -> Source:
    """A frame folder (directory) or a video file (by extension); ``options`` default: EXACT."""
    if os.path.isdir(path):
        return FrameFolder(path, options=options)
    if not os.path.exists(path):
        raise VideoDecodeError('file does not exist')
    if os.path.getsize(path) == 0:
        raise VideoDecodeError('empty file')
    return VideoFile(path, fps=fps, options=options)


class FrameCount:
    """The frame count a video is planned with: the container's estimate, until a decode has counted the
    frames. A decode that finds another count is redone once, planned with that count (the frames that
    exist); a second decode that finds yet another count is a VideoDecodeError.

    ``with_true_frame_count`` applies it to a read; a streaming reader loops over ``planned`` and ``settled``
    itself (eval.features.stream).
    """

    def __init__(self, estimate: int):
        self.planned = estimate
        self.recounted = False

    def settled(self, decoded: int) -> bool:
        """True when the decode found the planned count; else plan again with ``decoded`` (once)."""
        if decoded == self.planned:
            return True
        if self.recounted:
            raise VideoDecodeError(f'frame count changes between decodes ({self.planned} then {decoded})')
        self.planned, self.recounted = decoded, True
        return False


def with_true_frame_count(plan_and_read: Callable[[int], Tuple[int, T]], estimate: int) -> Tuple[int, T]:
    """(true frame count, result) of ``plan_and_read(n)``, which plans for n frames, decodes and returns
    (the count the decode found, what it read): called with the container's ``estimate`` and, when the
    decode counted otherwise, once more with that count (``FrameCount``)."""
    count = FrameCount(estimate)
    while True:
        decoded, result = plan_and_read(count.planned)
        if count.settled(decoded):
            return count.planned, result


def load_views_frames(source: Source, sampler: ViewSampler) -> Tuple[ViewPlan, np.ndarray]:
    """Decode the union of the frames all views need, once, and the plan that cuts the views from them.

    Returns (plan, frames) with frames (U, H, W, 3) uint8 aligned with ``plan.frames``.
    """
    def read(num: int) -> Tuple[int, DecodedFrames]:
        got = source.read(sampler.needed_frames(num), sampler.spec.scale)
        return got.num_decoded, got

    num, got = with_true_frame_count(read, source.num_frames)
    plan = sampler.plan(num, *got.source_size)
    if got.frames.shape[1:3] != plan.size:
        raise VideoDecodeError(f'decoded frames are {got.frames.shape[1:3]}, expected {plan.size}')
    return plan, got.frames


# --------------------------------------------------------------------------------------------- frame rate

FPS_HELP = ('resample video files to this many frames per second; 0: the native rate, no resampling '
            '(default: {default})')


def resolve_fps(flag: Optional[float], default: Optional[float], name: str = '--fps') -> Optional[float]:
    """The frame rate video files are decoded at (None: their native rate), from an --fps flag, in every job.

    None (not given): the job's ``default`` (scoring: the model config's fps; features: the preset's);
    0 (or 'native'): the native rate; > 0: that rate. Negative, infinite or NaN: a ValueError naming
    ``name``.
    """
    if flag is None:
        return default
    if flag == 'native' or flag == 0:
        return None
    if isinstance(flag, str) or not (flag > 0 and math.isfinite(flag)):
        raise ValueError(f'{name} must be 0 (the native rate) or a positive frame rate, got {flag}')
    return flag


# ------------------------------------------------------------------------ streaming and exact-size resize

RESAMPLING = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
              'lanczos': Image.LANCZOS}


def resize_exact(pixels: np.ndarray, height: int, width: int, resample: str = 'lanczos') -> np.ndarray:
    """RGB uint8 (height, width, 3) of an (H, W, 3) frame resized to exactly that size, aspect ignored.

    PIL's filter of that name (``'lanczos'`` is PIL's ANTIALIAS, what the public I3D feature extractors use
    for their 340x256 frames); a frame already of that size is returned as it is.
    """
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), RESAMPLING[resample]))


def iter_frames(source: Source, scale: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """(index, RGB uint8 frame) for every frame of ``source`` in order, each decoded once.

    For streaming over long videos: memory holds one frame, not the video. Frames are numbered as in
    ``source.read`` (a video file resampled to ``source.fps`` yields source frame floor(n * source_fps /
    fps) as frame n), and resized as ``read`` resizes them (``scale`` None: stored size). The number of
    frames yielded is the true count, which may differ from ``source.num_frames`` (a container estimate).
    """
    if isinstance(source, FrameFolder):
        for i in range(source.num_frames):
            yield i, source.read([i], scale).frames[0]
        return
    if hasattr(source, 'iter_frames'):          # a source that streams itself (eval.data.jpeg_roundtrip)
        yield from source.iter_frames(scale)
        return
    import av
    step = source._resampling()
    n, decoded, size, target = 0, 0, None, None
    try:
        with av.open(source.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = source.options.video_threads.upper()
            for decoded, frame in enumerate(container.decode(stream), start=1):
                i = decoded - 1
                if step is not None and int(n * step) != i:
                    continue            # a dropped source frame: never converted
                if size is None:
                    size = (frame.height, frame.width)
                    target = _target_size(*size, scale)
                elif (frame.height, frame.width) != size:
                    raise VideoDecodeError(f'frame {i} is {(frame.height, frame.width)}, earlier frames {size}')
                pixels = source._convert(frame, *target)
                while step is None or int(n * step) == i:
                    yield n, pixels
                    n += 1
                    if step is None:
                        break
    except av.FFmpegError as e:
        raise VideoDecodeError(f'decoding failed after {decoded} frames: {e}') from e
    if decoded == 0:
        raise VideoDecodeError('no frame could be decoded')
