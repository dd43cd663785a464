"""The views of the multi-view test equal the Caffe2 formulas on hand-worked cases.

Caffe2 (customized_video_io.cc): clip k of K starts at floor(N*k/K), frame j is (start + j*rate) mod N;
ScaleTransform resizes the short side; ClipTransformFlex puts crop p at p * ((L - crop) / 2) on the long side.
"""
import pytest

import zoo
from eval.data.crops import Crop, crop_boxes
from eval.data.views import ViewSampler, ViewSpec, caffe2_clip_start, centre_clip_start, clip_frame_indices, scaled_size


def test_long_video_clip_starts_are_floor_n_k_over_k():
    idx = clip_frame_indices(300, num_frames=32, sampling_rate=2, num_clips=10)
    assert idx.shape == (10, 32)
    assert list(idx[:, 0]) == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    assert list(idx[0]) == list(range(0, 64, 2))


def test_last_clip_of_a_long_video_wraps_to_the_start():
    idx = clip_frame_indices(300, num_frames=32, sampling_rate=2, num_clips=10)
    # 270 + 2j reaches 300 at j = 15 and continues from frame 0
    assert list(idx[9, 13:17]) == [296, 298, 0, 2]
    assert idx[9, 31] == (270 + 62) % 300 == 32


def test_short_video_repeats_its_frames():
    # an 8x8 model on a 20-frame video: starts 0, 2, ..., 18; every clip spans 64 frames, so it cycles
    idx = clip_frame_indices(20, num_frames=8, sampling_rate=8, num_clips=10)
    assert list(idx[:, 0]) == list(range(0, 20, 2))
    assert list(idx[0]) == [0, 8, 16, 4, 12, 0, 8, 16]
    assert list(idx[3]) == [6, 14, 2, 10, 18, 6, 14, 2]


def test_clip_starts_round_down_when_n_is_not_a_multiple_of_k():
    # 7 * k / 10 = 0, 0.7, 1.4, 2.1, 2.8, 3.5, 4.2, 4.9, 5.6, 6.3
    assert [caffe2_clip_start(7, k, 10) for k in range(10)] == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]


def test_caffe2_float32_start_equals_exact_floor_for_kinetics_lengths():
    for n in range(1, 1001):
        for k in range(10):
            assert caffe2_clip_start(n, k, 10) == (n * k) // 10, (n, k)


def test_single_clip_is_centred_in_the_range_of_training_starts():
    assert centre_clip_start(300, 32, 2) == 118          # (300 - 64) // 2
    assert centre_clip_start(132, 64, 1) == 34           # Big Buck Bunny, Inception-I3D
    assert list(clip_frame_indices(300, 32, 2, 1)[0, [0, -1]]) == [118, 180]


def test_single_clip_of_a_video_shorter_than_the_span_starts_at_zero_and_wraps():
    assert centre_clip_start(50, 32, 2) == 0
    assert list(clip_frame_indices(50, 32, 2, 1)[0, 24:27]) == [48, 0, 2]


def test_plan_decodes_each_shared_frame_once():
    sampler = ViewSampler(ViewSpec(num_frames=8, sampling_rate=8, spatial_crops=3, temporal_clips=10,
                                   scale=256, crop_size=256))
    plan = sampler.plan(20, 256, 340)
    assert list(plan.frames) == sorted(set(plan.frames))
    # 10 clips x 8 frames = 80 frame reads, but even starts and an even rate touch only the 10 even frames
    assert list(plan.frames) == list(range(0, 20, 2)) and plan.num_views == 30
    for k in range(10):
        assert list(plan.clip_frames(k)) == list(clip_frame_indices(20, 8, 8, 10)[k])


def test_landscape_720p_resizes_to_256_by_455():
    assert scaled_size(720, 1280, 256) == (256, 455)     # 1280 * (256/720) = 455.1, truncated
    assert scaled_size(256, 340, 256) == (256, 340)      # stored at the test scale: unchanged


def test_portrait_resizes_its_width_to_the_scale():
    assert scaled_size(1280, 720, 256) == (455, 256)


def test_short_side_is_exactly_the_scale_where_float32_truncation_would_lose_a_pixel():
    # Caffe2's (int)(23 * (224.f / 23)) is 223; the crop of the full short side must still fit
    assert scaled_size(23, 40, 224)[0] == 224


def test_three_crops_slide_along_the_width_of_a_landscape_frame():
    assert crop_boxes(256, 340, 256, 'caffe2', 3) == [Crop('left', 0, 0, 256), Crop('centre', 0, 42, 256),
                                                       Crop('right', 0, 84, 256)]


def test_third_crop_uses_caffe2_rounding_when_the_slack_is_odd():
    # L - crop = 199: Caffe2 offsets are p * (199 / 2) = 0, 99, 198 (not 199)
    assert [b.left for b in crop_boxes(256, 455, 256, 'caffe2', 3)] == [0, 99, 198]


def test_three_crops_slide_along_the_height_of_a_portrait_frame():
    assert crop_boxes(455, 256, 256, 'caffe2', 3) == [Crop('top', 0, 0, 256), Crop('centre', 99, 0, 256),
                                                       Crop('bottom', 198, 0, 256)]


def test_smaller_crop_slides_along_the_long_side_centred_on_the_short_side():
    assert crop_boxes(455, 256, 224, 'caffe2', 3) == [Crop('top', 0, 16, 224), Crop('centre', 115, 16, 224),
                                                       Crop('bottom', 230, 16, 224)]
    assert crop_boxes(256, 455, 224, 'caffe2', 3) == [Crop('left', 16, 0, 224), Crop('centre', 16, 115, 224),
                                                       Crop('right', 16, 230, 224)]


def test_single_crop_is_the_centre_crop():
    assert crop_boxes(256, 455, 224, 'caffe2', 1) == [Crop('centre', 16, 115, 224)]
    assert crop_boxes(455, 256, 224, 'caffe2', 1) == [Crop('centre', 115, 16, 224)]


def test_square_frame_gives_three_identical_crops():
    assert [c[1:] for c in crop_boxes(256, 256, 256, 'caffe2', 3)] == [(0, 0, 256, False)] * 3


def test_six_crops_add_the_three_mirrored_positions():
    boxes = crop_boxes(256, 340, 256, 'caffe2', 6)
    assert [b.mirrored for b in boxes] == [False] * 3 + [True] * 3
    # a mirrored crop's box is in the mirrored frame: position p's region mirrored lies at 84 - left_p there
    assert [b.left for b in boxes] == [0, 42, 84] + [84, 42, 0]


def test_crop_larger_than_the_frame_is_an_error():
    with pytest.raises(ValueError):
        crop_boxes(200, 300, 256, 'caffe2', 3)


def test_view_spec_from_config_uses_test_crop_for_multi_view_and_training_crop_for_one_view():
    cfg = zoo.get_pretrained_cfg('i3d_r50')
    assert ViewSpec.from_cfg(cfg, (3, 10)) == ViewSpec(32, 2, 3, 10, 256, 256)
    assert ViewSpec.from_cfg(cfg, (1, 1)) == ViewSpec(32, 2, 1, 1, 256, 224)
    assert ViewSpec.from_cfg(zoo.get_pretrained_cfg('i3d_r50_8x8'), (3, 10), crop=224).crop_size == 224
