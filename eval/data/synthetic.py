"""Synthetic clips for the demo and the tests: smooth moving content written as video files (PyAV) or JPEG folders.

The content is deliberately codec-friendly (smooth gradients, a soft disc) and different in every frame
(a soft vertical band whose position encodes the frame number), so two decodes of the same clip agree to
within compression noise while an off-by-one frame index does not.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image


def synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a drifting gradient, a moving soft disc and a frame-number band."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        s = t / max(num_frames - 1, 1)
        img = np.empty((height, width, 3), dtype=np.float32)
        for c in range(3):
            img[..., c] = 90 + 60 * np.sin(2 * np.pi * (x * (1 + c) + 0.5 * y) + phase[c] + 2 * np.pi * s)
        cy, cx = 0.5 + 0.3 * np.sin(2 * np.pi * s), 0.2 + 0.6 * s
        disc = np.exp(-(((y - cy) * height) ** 2 + ((x - cx) * width) ** 2) / (2 * (0.08 * min(height, width)) ** 2))
        img += 100 * disc[..., None] * np.array([1.0, 0.6, 0.2], dtype=np.float32)
        band = np.exp(-(((x - (t + 0.5) / num_frames) * width) ** 2) / (2 * (0.02 * width) ** 2))
        img += 60 * band[..., None]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_video(path: str, frames: np.ndarray, fps: int = 25, crf: int = 12) -> str:
    """Encode (T, H, W, 3) uint8 frames: H.264 in .mp4/.mkv, VP9 in .webm; yuv420p, so H and W must be even."""
    import av
    ext = os.path.splitext(path)[1].lower()
    codec = 'libvpx-vp9' if ext == '.webm' else 'libx264'
    options = {'crf': str(crf)}
    if codec == 'libvpx-vp9':
        options.update({'b:v': '0', 'deadline': 'good', 'cpu-used': '8'})
    else:
        options.update({'preset': 'veryfast'})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, 'w') as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = 'yuv420p'
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: str, frames: np.ndarray, quality: int = 95, pattern: str = 'image_{:05d}.jpg',
                       first: int = 1) -> str:
    """One JPEG per frame, numbered from ``first`` without zero padding issues (sorted numerically on read)."""
    os.makedirs(folder, exist_ok=True)
    for t, image in enumerate(frames):
        Image.fromarray(image).save(os.path.join(folder, pattern.format(t + first)), quality=quality)
    return folder


def write_synthetic_video(path: str, num_frames: int = 48, height: int = 240, width: int = 320,
                          fps: int = 25, seed: int = 0, crf: Optional[int] = None) -> str:
    return write_video(path, synthetic_frames(num_frames, height, width, seed), fps=fps,
                       **({} if crf is None else {'crf': crf}))
