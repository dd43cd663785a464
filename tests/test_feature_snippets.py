"""Snippet and crop arithmetic of the feature extractor, checked on hand-worked cases."""
import numpy as np
import pytest

from eval.features.presets import PRESETS, Resize, output_stem, resolve_settings
from eval.data.crops import crop_boxes
from eval.data.snippets import ShortVideoError, last_use, plan_snippets, snippet_count

# (N, drop, pad/loop/zero) snippet counts for 16-frame snippets every 16 frames, worked by hand:
# drop = floor((N - 16) / 16) + 1, pad = ceil(N / 16)
EDGES = [(15, 0, 1), (16, 1, 1), (17, 1, 2), (31, 1, 2), (32, 2, 2), (33, 2, 3), (433, 27, 28)]


@pytest.mark.parametrize('n, drop, pad', EDGES)
def test_snippet_counts_at_the_edges(n, drop, pad):
    assert snippet_count(n, 16, 16, 'drop') == drop
    for tail in ('pad', 'loop', 'zero'):
        assert snippet_count(n, 16, 16, tail) == pad


def test_drop_keeps_whole_snippets_and_drops_the_rest():
    plan = plan_snippets(33, 16, 16, 'drop')
    np.testing.assert_array_equal(plan.frames, [list(range(16)), list(range(16, 32))])   # frame 32 dropped
    assert [plan.span(k) for k in range(2)] == [(0, 15), (16, 31)] and plan.padded(1) == 0


def test_drop_refuses_a_video_shorter_than_one_snippet_saying_why():
    with pytest.raises(ShortVideoError, match=r'15 frames is shorter than one 16-frame snippet.*--tail pad'):
        plan_snippets(15, 16, 16, 'drop')


def test_pad_repeats_the_last_frame():
    plan = plan_snippets(17, 16, 16, 'pad')
    np.testing.assert_array_equal(plan.frames[1], [16] * 16)
    assert plan.span(1) == (16, 16) and plan.padded(1) == 15
    short = plan_snippets(5, 16, 16, 'pad')                          # shorter than a snippet: kept, padded
    np.testing.assert_array_equal(short.frames[0], [0, 1, 2, 3] + [4] * 12)


def test_loop_wraps_to_the_first_frames():
    np.testing.assert_array_equal(plan_snippets(33, 16, 16, 'loop').frames[2], [32] + list(range(15)))
    np.testing.assert_array_equal(plan_snippets(5, 16, 16, 'loop').frames[0], [0, 1, 2, 3, 4] * 3 + [0])


def test_zero_marks_frames_past_the_end():
    np.testing.assert_array_equal(plan_snippets(31, 16, 16, 'zero').frames[1], list(range(16, 31)) + [-1])


def test_overlapping_snippets_stop_at_the_first_that_reaches_the_end():
    # 32-frame snippets every 8 frames over 40 frames: drop gives starts 0, 8 (8 + 32 = 40 fits);
    # pad needs no more, since the snippet at 8 already reaches frame 39
    assert snippet_count(40, 32, 8, 'drop') == 2 and snippet_count(40, 32, 8, 'pad') == 2
    assert snippet_count(41, 32, 8, 'drop') == 2 and snippet_count(41, 32, 8, 'pad') == 3
    # snippets with gaps (stride > snippet) never start past the end: 20 frames, 4 every 10 -> starts 0, 10
    assert snippet_count(20, 4, 10, 'pad') == 2


def test_lookahead_reproduces_video_features_window_count():
    # floor((N - 1 - 64) / 64) + 1: 64 frames -> 0 windows, 65 -> 1, 128 -> 1, 129 -> 2
    assert [snippet_count(n, 64, 64, 'drop', lookahead=1) for n in (65, 128, 129, 300)] == [1, 1, 2, 4]
    with pytest.raises(ShortVideoError, match='at least 65 frames'):
        plan_snippets(64, 64, 64, 'drop', lookahead=1)


def test_dense_windows_are_centred_with_zero_frames_at_both_ends():
    plan = plan_snippets(25, 21, 1, 'zero', 'centre')
    assert plan.num_snippets == 25                                   # one per frame
    np.testing.assert_array_equal(plan.frames[0], [-1] * 10 + list(range(11)))
    np.testing.assert_array_equal(plan.frames[12], list(range(2, 23)))
    np.testing.assert_array_equal(plan.frames[24], list(range(14, 25)) + [-1] * 10)
    assert plan.span(0) == (0, 10) and plan.padded(0) == 10 and plan.centres[24] == 24
    np.testing.assert_array_equal(plan_snippets(25, 21, 1, 'pad', 'centre').frames[0], [0] * 11 + list(range(1, 11)))
    assert plan_snippets(25, 21, 1, 'drop', 'centre').centres.tolist() == [10, 11, 12, 13, 14]


def test_last_use_frees_each_frame_after_its_last_snippet():
    plan = plan_snippets(40, 16, 8, 'drop')                          # starts 0, 8, 16, 24
    use = last_use(plan)
    assert use[0] == 0 and use[8] == 1 and use[39] == 3
    assert (last_use(plan_snippets(33, 16, 16, 'loop'))[:15] == 2).all()    # kept for the wrapped snippet


# ---------------------------------------------------------------------------------------------- crops

def test_ten_crops_are_the_documented_boxes_in_the_documented_order():
    crops = crop_boxes(256, 340, 224, 'ten')
    boxes = [((c.top, c.top + 224), (c.left, c.left + 224), c.mirrored) for c in crops]
    five = [((0, 224), (0, 224)), ((0, 224), (116, 340)), ((16, 240), (58, 282)), ((32, 256), (0, 224)),
            ((32, 256), (116, 340))]
    assert boxes == [b + (False,) for b in five] + [b + (True,) for b in five]
    assert [c.name for c in crops[:5]] == ['top-left', 'top-right', 'centre', 'bottom-left', 'bottom-right']


def test_one_three_and_five_crops():
    assert crop_boxes(256, 340, 224, 'centre') == [crop_boxes(256, 340, 224, 'five')[2]]
    assert [(c.top, c.left) for c in crop_boxes(256, 340, 224, 'three')] == [(16, 0), (16, 58), (16, 116)]
    assert [(c.top, c.left) for c in crop_boxes(340, 256, 224, 'three')] == [(0, 16), (58, 16), (116, 16)]
    with pytest.raises(ValueError, match='does not fit'):
        crop_boxes(200, 340, 224, 'centre')


# --------------------------------------------------------------------------------------------- presets

def test_presets_state_the_documented_settings():
    r50 = PRESETS['i3d-r50-10crop']
    assert (r50.snippet, r50.stride, r50.tail, r50.crops, r50.crop_size, r50.resize, r50.norm) == \
        (16, 16, 'drop', 10, 224, '340x256:lanczos', 'minus1-1')
    inc = PRESETS['i3d-inception']
    assert (inc.snippet, inc.stride, inc.crops, inc.resize, inc.lookahead, inc.naming) == \
        (64, 64, 1, '256:bilinear', 1, 'stem_rgb')
    dense = PRESETS['dense']
    assert (dense.snippet, dense.stride, dense.align, dense.tail, dense.layout) == (21, 1, 'centre', 'zero', 'channels-first')


def test_flags_override_a_preset_and_bad_values_are_refused():
    s = resolve_settings('i3d-r50-10crop', snippet=32, stride=8, crops=3, resize='256', fps=0)
    assert (s.snippet, s.stride, s.crops, s.resize, s.fps, s.tail) == (32, 8, 3, '256:bilinear', None, 'drop')
    assert Resize.parse('340x256') == Resize('exact', width=340, height=256, filter='lanczos')
    with pytest.raises(ValueError, match='--crops must be one of'):
        resolve_settings('i3d-r50-10crop', crops=4)
    with pytest.raises(ValueError, match='unknown preset'):
        resolve_settings('c3d')


def test_output_names_follow_each_preset():
    assert output_stem('/v/Abuse001_x264.mp4', 'name') == 'Abuse001_x264'
    assert output_stem('/v/01_001.avi.mp4', 'name') == '01_001'                # up to the first dot
    assert output_stem('/v/video.v2.mp4', 'stem_rgb') == 'video.v2_rgb'
