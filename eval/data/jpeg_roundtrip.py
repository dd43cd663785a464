"""A video's frames as the public feature tools see them: through ffmpeg's JPEGs, without a frame folder.

The public I3D-R50 10-crop extractor does not read the video: it runs ``ffmpeg -i VIDEO -start_number 0
DIR/%d.jpg`` (ffmpeg's default MJPEG settings, which are lossy) and reads the JPEGs back with PIL. Features
that match the ones people publish need that round trip. ``JpegRoundTrip`` runs the pinned ffmpeg with the
same input and encoder settings, writing to a pipe instead of a folder (``-f image2pipe -c:v mjpeg``: the
same encoder, the same bytes as the ``%d.jpg`` files, checked in tests/test_jpeg_roundtrip.py), splits the
stream into JPEG files in memory and decodes each exactly as a frame folder's JPEG is decoded
(eval.data.decode: simplejpeg, PIL where it must), so features from the video equal features from ffmpeg's
frame dump.

The ffmpeg is the binary of the ``imageio-ffmpeg`` wheel (pinned in setup.py: the bytes depend on the build),
or another given by path; its version and sha256 are recorded with the features.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from eval.data.decode import DecodedFrames, VideoDecodeError, decode_jpeg_bytes

PINNED = 'imageio-ffmpeg==0.6.0 (ffmpeg 7.0.2-static, johnvansickle.com build)'
PUBLIC_COMMAND = 'ffmpeg -i VIDEO -start_number 0 DIR/%d.jpg'
_SOI, _EOI = b'\xff\xd8', b'\xff\xd9'


FFMPEG_VARIABLE = 'ZOO_FFMPEG'      # another ffmpeg binary by path (its identity is recorded)


def pinned_ffmpeg() -> Optional[str]:
    """The ffmpeg of the round trip: $ZOO_FFMPEG when set, else the imageio-ffmpeg wheel's, else None."""
    if os.environ.get(FFMPEG_VARIABLE):
        return os.environ[FFMPEG_VARIABLE]
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def require_ffmpeg() -> str:
    """The round trip's ffmpeg, or a ValueError saying how to get one (or to turn the round trip off)."""
    exe = pinned_ffmpeg()
    if exe is None:
        raise ValueError(f'the JPEG round trip ({PUBLIC_COMMAND}, as the public 10-crop tool reads videos) needs '
                         f'ffmpeg: pip install {PINNED.split(" ")[0]} (a dependency of this project), or set '
                         f'{FFMPEG_VARIABLE}=/path/to/ffmpeg; --no-jpeg-roundtrip reads the video directly')
    if not os.access(exe, os.X_OK):
        raise ValueError(f'{FFMPEG_VARIABLE}={exe}: not an executable file')
    return exe


@functools.lru_cache(maxsize=8)
def ffmpeg_identity(exe: str) -> dict:
    """What made the JPEGs: the binary's path, its first version line and its sha256."""
    try:
        version = subprocess.run([exe, '-version'], capture_output=True, text=True, timeout=30).stdout
    except OSError as e:
        raise ValueError(f'ffmpeg {exe}: cannot run it ({e})') from e
    digest = hashlib.sha256()
    with open(exe, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return {'path': exe, 'version': version.splitlines()[0] if version else 'unknown', 'sha256': digest.hexdigest(),
            'command': f'{PUBLIC_COMMAND} (piped: -f image2pipe -c:v mjpeg -, the same bytes)'}


def split_jpegs(buffer: bytearray) -> Tuple[List[bytes], int]:
    """Whole JPEG files at the start of ``buffer`` and how many bytes they used. A JPEG ends at the first EOI
    marker after its start (in entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so the
    first 0xFFD9 is the end; ffmpeg's MJPEG frames carry no embedded thumbnail)."""
    files, pos = [], 0
    while True:
        start = buffer.find(_SOI, pos)
        if start < 0:
            return files, len(buffer) if not files else pos
        end = buffer.find(_EOI, start + 2)
        if end < 0:
            return files, start
        files.append(bytes(buffer[start:end + 2]))
        pos = end + 2


def ffmpeg_jpegs(path: str, exe: str, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The JPEG files ``ffmpeg -i path -start_number 0 %d.jpg`` would write, in order, from a pipe."""
    cmd = [exe, '-nostdin', '-v', 'error', '-i', path, '-f', 'image2pipe', '-c:v', 'mjpeg', '-']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buffer = bytearray()
    try:
        while True:
            data = proc.stdout.read(chunk)
            if not data:
                break
            buffer += data
            files, used = split_jpegs(buffer)
            del buffer[:used]
            yield from files
        err = proc.stderr.read().decode('utf-8', 'replace').strip()
        if proc.wait() != 0:
            raise VideoDecodeError(f'ffmpeg failed (exit {proc.returncode}): {err.splitlines()[-1] if err else ""}')
        if buffer.strip(b'\x00'):
            raise VideoDecodeError(f'ffmpeg output ended inside a JPEG ({len(buffer)} bytes left)')
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


class JpegRoundTrip:
    """A video file read as ffmpeg's JPEGs decoded back (see the module): the interface of eval.data.decode's
    sources. ``num_frames`` is the container's estimate (PyAV's packet count); the true count is the number of
    JPEGs ffmpeg writes, which readers learn by decoding (eval.data.decode.FrameCount)."""
    kind = 'file'

    def __init__(self, path: str, exe: str):
        from eval.data.decode import VideoFile
        self.path = path
        self.exe = exe
        estimate = VideoFile(path)
        self.num_frames = estimate.num_frames
        self.source_fps = estimate.source_fps
        self.fps = None

    def _decoded(self, scale: Optional[int]) -> Iterator[Tuple[int, Tuple[int, int], np.ndarray]]:
        size = None
        for i, data in enumerate(ffmpeg_jpegs(self.path, self.exe)):
            this_size, pixels = decode_jpeg_bytes(data, scale, f'JPEG {i} of ffmpeg')
            if size is not None and this_size != size:
                raise VideoDecodeError(f'JPEG {i} is {this_size}, earlier ones {size}')
            size = this_size
            yield i, size, pixels
        if size is None:
            raise VideoDecodeError('ffmpeg wrote no JPEG')

    def iter_frames(self, scale: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """(index, RGB frame) of every JPEG, in order (eval.data.decode.iter_frames hands a round trip here)."""
        for i, _, pixels in self._decoded(scale):
            yield i, pixels

    def read(self, indices: Sequence[int], scale: Optional[int]) -> DecodedFrames:
        """The frames at ``indices`` (every JPEG is decoded to count them, as VideoFile decodes every frame)."""
        wanted = {}
        for pos, n in enumerate(indices):
            wanted.setdefault(int(n), []).append(pos)
        out, size, count = None, None, 0
        for i, size, pixels in self._decoded(scale):
            count = i + 1
            if i in wanted:
                if out is None:
                    out = np.empty((len(indices),) + pixels.shape, np.uint8)
                for pos in wanted[i]:
                    out[pos] = pixels
        if out is None or any(i >= count for i in wanted):
            return DecodedFrames(np.zeros((0, 1, 1, 3), np.uint8), size, count)
        return DecodedFrames(out, size, count)
