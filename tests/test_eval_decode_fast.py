"""The decode fast path (eval.data.decode.DecodeOptions) against the PIL reference path.

Exact paths must give bit-identical frames; the opt-in approximate ones (JPEG draft, swscale resize) stay
within the tolerances measured on real footage (mean about 1 grey level of 255). No test times anything.
"""
import sys

import numpy as np
import pytest
from PIL import Image

from eval.data import decode
from eval.data.decode import (EXACT, DecodeOptions, FrameFolder, VideoFile, draft_reduction, load_views_frames,
                         open_source, resize_short_side)
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_video
from eval.data.views import ViewSampler, ViewSpec

SPEC = ViewSpec(num_frames=4, sampling_rate=2, spatial_crops=3, temporal_clips=3, scale=64, crop_size=64)


def textured(num, height, width, seed=0):
    """Synthetic frames with grain, so JPEG/H.264 have real high-frequency content to get wrong."""
    rng = np.random.default_rng(seed)
    base = synthetic_frames(num, height, width, seed=seed).astype(np.int16)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def reference_folder(folder, indices, scale):
    """The reference: PIL full decode, then resize_short_side, frame by frame."""
    paths = FrameFolder(folder, EXACT).frame_paths
    out = []
    for i in indices:
        with Image.open(paths[i]) as image:
            image.load()
            out.append(resize_short_side(image, scale))
    return np.stack(out)


def reference_video(path, indices, scale):
    import av
    want, got = set(int(i) for i in indices), {}
    with av.open(path) as container:
        container.streams.video[0].thread_type = 'NONE'
        for n, frame in enumerate(container.decode(video=0)):
            if n in want:
                got[n] = resize_short_side(frame.to_image(), scale)
    return np.stack([got[int(i)] for i in indices])


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp('fast')
    small = textured(24, 64, 112, seed=1)      # stored at the test scale: no resize
    large = textured(12, 144, 256, seed=2)     # 2.25x the test scale: resize, and draft can reduce by 2
    gray = textured(6, 64, 96, seed=3)[..., 0]
    return {
        'small_jpg': write_frame_folder(str(root / 'small'), small, quality=90),
        'large_jpg': write_frame_folder(str(root / 'large'), large, quality=90),
        'gray_jpg': write_frame_folder(str(root / 'gray'), gray, quality=90),   # greyscale JPEGs
        'small_mp4': write_video(str(root / 'small.mp4'), small, crf=23),
        'large_mp4': write_video(str(root / 'large.mp4'), large, crf=23),
    }


@pytest.mark.parametrize('name', ['small_jpg', 'large_jpg', 'gray_jpg'])
@pytest.mark.parametrize('decoder', ['auto', 'pil'])
def test_jpeg_fast_path_is_bit_identical_to_pil(clips, name, decoder):
    folder = FrameFolder(clips[name], DecodeOptions(jpeg_decoder=decoder))
    indices = [3, 0, 5, 3]                                   # out of order, with a repeat
    got = folder.read(indices, scale=64)
    np.testing.assert_array_equal(got.frames, reference_folder(clips[name], indices, 64))
    assert got.frames.dtype == np.uint8 and got.frames.flags.c_contiguous


def test_simplejpeg_and_pil_agree_when_simplejpeg_is_present(clips):
    pytest.importorskip('simplejpeg')
    assert decode._simplejpeg() is not None
    a = FrameFolder(clips['small_jpg'], DecodeOptions(jpeg_decoder='simplejpeg')).read(range(24), 64).frames
    b = FrameFolder(clips['small_jpg'], DecodeOptions(jpeg_decoder='pil')).read(range(24), 64).frames
    np.testing.assert_array_equal(a, b)


def test_missing_simplejpeg_falls_back_to_pil(clips, monkeypatch):
    monkeypatch.setitem(sys.modules, 'simplejpeg', None)     # `import simplejpeg` now raises ImportError
    assert decode._simplejpeg() is None
    got = FrameFolder(clips['large_jpg'], DecodeOptions(jpeg_decoder='simplejpeg')).read([1, 2], 64)
    np.testing.assert_array_equal(got.frames, reference_folder(clips['large_jpg'], [1, 2], 64))


def test_a_file_simplejpeg_rejects_is_left_to_pil(tmp_path):
    # A JPEG cut short: simplejpeg refuses it, PIL decides (here: unreadable), and the reason names the frame.
    frames = textured(3, 64, 96)
    folder = write_frame_folder(str(tmp_path / 'f'), frames, quality=90)
    path = FrameFolder(folder).frame_paths[1]
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 3])
    with pytest.raises(decode.VideoDecodeError, match='image_00002'):
        FrameFolder(folder).read([0, 1], 64)


def test_cmyk_jpeg_uses_pils_colour_conversion(tmp_path):
    image = Image.fromarray(textured(1, 64, 96)[0]).convert('CMYK')
    (tmp_path / 'c').mkdir()
    image.save(tmp_path / 'c' / '1.jpg', quality=90)
    got = FrameFolder(str(tmp_path / 'c')).read([0], 64).frames
    np.testing.assert_array_equal(got, reference_folder(str(tmp_path / 'c'), [0], 64))


def test_draft_rule_matches_pil():
    assert draft_reduction(720, 1280, 256, 455) == 2
    assert draft_reduction(1080, 1920, 256, 455) == 4
    assert draft_reduction(256, 456, 256, 456) == 1
    assert draft_reduction(480, 640, 256, 341) == 1            # 1.9x: too close to the target for a reduction


@pytest.mark.parametrize('decoder', ['auto', 'pil'])
def test_jpeg_draft_is_close_to_the_full_decode(clips, decoder):
    options = DecodeOptions(jpeg_decoder=decoder, jpeg_draft=True)
    got = FrameFolder(clips['large_jpg'], options).read(range(12), 64)
    ref = reference_folder(clips['large_jpg'], range(12), 64)
    assert got.frames.shape == ref.shape and got.source_size == (144, 256)   # size from the stored frame
    diff = np.abs(got.frames.astype(np.int16) - ref)
    assert 0 < diff.mean() < 3.0                             # it is approximate, and only just
    # Frames stored at the test scale are never drafted: exact.
    small = FrameFolder(clips['small_jpg'], options).read(range(24), 64).frames
    np.testing.assert_array_equal(small, reference_folder(clips['small_jpg'], range(24), 64))


def test_simplejpeg_and_pil_draft_decode_alike(clips):
    pytest.importorskip('simplejpeg')
    a = FrameFolder(clips['large_jpg'], DecodeOptions(jpeg_decoder='simplejpeg', jpeg_draft=True)).read(range(12), 64)
    b = FrameFolder(clips['large_jpg'], DecodeOptions(jpeg_decoder='pil', jpeg_draft=True)).read(range(12), 64)
    assert np.abs(a.frames.astype(np.int16) - b.frames).max() <= 2


@pytest.mark.parametrize('name', ['small_mp4', 'large_mp4'])
@pytest.mark.parametrize('threads', ['AUTO', 'FRAME', 'SLICE', 'NONE'])
def test_video_fast_path_is_identical_to_to_image_and_pil_with_any_threading(clips, name, threads):
    source = VideoFile(clips[name], options=DecodeOptions(video_threads=threads))
    indices = [0, 7, 3, 11, 7]
    got = source.read(indices, scale=64)
    assert got.num_decoded == source.num_frames
    np.testing.assert_array_equal(got.frames, reference_video(clips[name], indices, 64))


def test_swscale_resize_is_close_and_exact_without_a_resize(clips):
    options = DecodeOptions(video_resize='swscale')
    ref = reference_video(clips['large_mp4'], range(12), 64)
    got = VideoFile(clips['large_mp4'], options=options).read(range(12), 64).frames
    assert got.shape == ref.shape
    assert np.abs(got.astype(np.int16) - ref).mean() < 3.0
    small = VideoFile(clips['small_mp4'], options=options).read(range(24), 64).frames
    np.testing.assert_array_equal(small, reference_video(clips['small_mp4'], range(24), 64))


def test_views_decode_each_needed_frame_once(clips, monkeypatch):
    calls = []
    real = decode._decode_pil
    monkeypatch.setattr(decode, '_simplejpeg', lambda: None)
    monkeypatch.setattr(decode, '_decode_pil', lambda f, s, d: calls.append(f) or real(f, s, d))
    plan, frames = load_views_frames(open_source(clips['small_jpg']), ViewSampler(SPEC))
    assert len(calls) == len(set(calls)) == len(plan.frames) < SPEC.num_views * SPEC.num_frames


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        DecodeOptions(video_resize='nearest')
    with pytest.raises(ValueError):
        DecodeOptions(jpeg_decoder='turbo')
