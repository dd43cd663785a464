"""The data rules every job shares, each decided in one place: crops (eval.data.crops), the network's pixel
values (eval.data.pixels), the true frame count and the frame rate (eval.data.decode)."""
import math

import numpy as np
import pytest
import torch

import zoo
from eval.data.crops import Crop, crop_boxes, cut, mirrored_frames
from eval.data.decode import (FrameCount, VideoDecodeError, VideoFile, load_views_frames, open_source, resolve_fps,
                              with_true_frame_count)
from eval.data.pixels import PixelNormalizer
from eval.data.records import VideoRecord, VideoSample
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_synthetic_video
from eval.data.train_clips import TrainSpec, load_train_clip, sample_generator
from eval.data.views import ViewPlan, ViewSampler, ViewSpec
from eval.features.job import build_parser as feature_parser
from eval.features.job import extract
from eval.features.presets import NORMS, PRESETS, resolve_settings
from eval.features.stream import VideoJob, normalisation, snippet_batch, stream_video_checked
from eval.kit.config import RunRequest, check_request, library_config, resolve_config
from eval.kit.loop import evaluate, iter_views
from eval.score.cli import build_parser as score_parser


# ------------------------------------------------------------------------------------------------ crops

def test_ten_crops_of_340x256_are_the_documented_boxes_the_last_five_in_the_mirrored_frame():
    described = [c.describe() for c in crop_boxes(256, 340, 224, 'ten')]
    five = [('top-left', [0, 224], [0, 224]), ('top-right', [0, 224], [116, 340]), ('centre', [16, 240], [58, 282]),
            ('bottom-left', [32, 256], [0, 224]), ('bottom-right', [32, 256], [116, 340])]
    assert described == (
        [{'name': n, 'rows': r, 'cols': c, 'frame': 'original'} for n, r, c in five]
        + [{'name': f'mirrored {n}', 'rows': r, 'cols': c, 'frame': 'mirrored left-right'} for n, r, c in five])


def test_caffe2_three_crops_of_455x256_sit_at_0_99_198_where_three_crop_ends_at_199():
    assert crop_boxes(256, 455, 256, 'caffe2', 3) == [Crop('left', 0, 0, 256), Crop('centre', 0, 99, 256),
                                                      Crop('right', 0, 198, 256)]
    assert [c.left for c in crop_boxes(256, 455, 256, 'three')] == [0, 99, 199]


def test_caffe2_six_crops_are_the_three_regions_each_mirrored():
    # 8 x 13 frame, crop 8: positions at 0, 2, 4; mirrored, region p lies at 13 - 8 - left_p = 5, 3, 1
    boxes = crop_boxes(8, 13, 8, 'caffe2', 6)
    assert boxes[3:] == [Crop('mirrored right', 0, 5, 8, True), Crop('mirrored centre', 0, 3, 8, True),
                         Crop('mirrored left', 0, 1, 8, True)]
    frames = torch.randint(0, 256, (2, 8, 13, 3), dtype=torch.uint8)
    mirrored = mirrored_frames(frames, boxes)
    for original, flipped in zip(boxes[:3], boxes[3:]):
        region = frames[:, :, original.left:original.left + 8]
        assert torch.equal(cut(frames, flipped, mirrored), region.flip(2))


def test_caffe2_single_crop_is_the_centre_crop_and_other_counts_spread_evenly():
    assert crop_boxes(256, 455, 224, 'caffe2', 1) == crop_boxes(256, 455, 224, 'centre') == [
        Crop('centre', 16, 115, 224)]
    assert [c.left for c in crop_boxes(256, 455, 256, 'caffe2', 4)] == [0, 66, 132, 199]


def test_a_geometry_refuses_a_count_it_does_not_have_and_a_crop_that_does_not_fit():
    with pytest.raises(ValueError, match="'ten' is 10 crops, not 6"):
        crop_boxes(256, 340, 224, 'ten', 6)
    with pytest.raises(ValueError, match='caffe2 crops need a positive count'):
        crop_boxes(256, 340, 224, 'caffe2')
    with pytest.raises(ValueError, match='a 257x257 crop does not fit a 256x340 frame'):
        crop_boxes(256, 340, 257, 'centre')


def test_scoring_views_and_feature_snippets_cut_a_mirrored_crop_to_the_same_pixels():
    frames = torch.randint(0, 256, (3, 10, 14, 3), dtype=torch.uint8)
    crops = tuple(crop_boxes(10, 14, 6, 'ten'))
    plan = ViewPlan(num_decoded=3, frames=np.arange(3), clip_index=np.array([[0, 1, 2]]), size=(10, 14), boxes=crops)
    views = [v for _, v in iter_views(VideoSample(0, VideoRecord('x', 'x'), plan, frames))]
    batch = snippet_batch(frames, torch.tensor([[0, 1, 2]]), crops, PixelNormalizer((0, 0, 0), (1, 1, 1)))
    for j, view in enumerate(views):
        assert torch.equal(batch[j].permute(1, 2, 3, 0), view.float()), crops[j].name
    assert torch.equal(views[5], frames[:, 0:6, 8:14].flip(2))         # mirrored top-left = top-right, mirrored


# --------------------------------------------------------------------------------------- pixel values

class InputRecorder(torch.nn.Module):
    """Records the network input it is given; scoring calls forward, features forward_features/forward_head."""

    def __init__(self, channel_order: str):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.pretrained_cfg = zoo.VideoPretrainedCfg(
            num_frames=8, sampling_rate=1, channel_order=channel_order, crop_size=32, test_scale=32,
            test_crop_size=32, test_views=(1, 1), num_classes=2, label_set='test', class_names=('a', 'b'))
        self.inputs = []

    def forward_features(self, x):
        self.inputs.append(x.detach().clone())
        return x

    def forward_head(self, x, pre_logits=False):
        x = x.mean(dim=(2, 3, 4))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope='module')
def png_folder(tmp_path_factory):
    """8 lossless 32x32 frames: both jobs see exactly these pixels (no resize at scale / crop 32)."""
    frames = synthetic_frames(8, 32, 32, seed=5)
    return write_frame_folder(str(tmp_path_factory.mktemp('png') / 'v'), frames, pattern='{}.png'), frames


def network_inputs(folder, channel_order):
    """(scoring input, features input) of the 8 frames, both (1, 3, 8, 32, 32), the model's mean/std."""
    scorer, extractor = InputRecorder(channel_order), InputRecorder(channel_order)
    spec = ViewSpec(num_frames=8, sampling_rate=1, spatial_crops=1, temporal_clips=1, scale=32, crop_size=32)
    evaluate(scorer, [VideoRecord('v', folder, label=0)], library_config(scorer, spec, no_fast_path=True, workers=0))
    extract(extractor, folder, device='cpu', fast_path=False, resize='none', crops=1, crop_size=32, snippet=8,
            stride=8, norm='model')
    return scorer.inputs[0], extractor.inputs[0]


def test_a_bgr_network_gets_reversed_channels_in_scoring_and_features_alike(png_folder):
    folder, frames = png_folder
    score_rgb, feature_rgb = network_inputs(folder, 'RGB')
    score_bgr, feature_bgr = network_inputs(folder, 'BGR')
    assert torch.equal(score_bgr, score_rgb.flip(1)) and torch.equal(feature_bgr, feature_rgb.flip(1))
    assert not torch.equal(score_bgr, score_rgb)
    blue = (torch.from_numpy(frames[..., 2]).float() - 114.75) / 57.375           # the config's Caffe2 mean/std
    torch.testing.assert_close(score_bgr[0, 0], blue, rtol=1e-6, atol=0)
    # the two kernels: scoring multiplies by 1 / std (Caffe2), features divide; they differ in the last bit only
    torch.testing.assert_close(feature_bgr, score_bgr, rtol=2.5e-7, atol=0)


def test_features_take_the_channel_order_from_the_model_and_mean_std_from_the_norm():
    cfg = InputRecorder('BGR').pretrained_cfg
    pixels = normalisation(resolve_settings('i3d-r50-10crop'), cfg)
    assert pixels.channel_order == 'BGR' and pixels.mean.tolist() == [127.5] * 3 and pixels.divide
    assert normalisation(resolve_settings('i3d-r50-10crop'), None).channel_order == 'RGB'


def test_the_two_kernels_are_the_extractors_division_and_caffe2s_multiplication():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256, 1).expand(1, 1, 1, 256, 3)
    divided = PixelNormalizer(*NORMS['minus1-1'], divide=True).channels_last_(x.float().clone())[..., 0].flatten()
    exact = torch.from_numpy((np.arange(256, dtype=np.float64) * 2 / 255 - 1).astype(np.float32))
    assert torch.equal(divided, exact)                        # correctly rounded x * 2 / 255 - 1, every value
    multiplied = PixelNormalizer(*NORMS['caffe2'])(x)[0, 0, 0, 0]
    assert torch.equal(multiplied, (torch.arange(256.) - 114.75) * (torch.tensor(1.0) / torch.tensor(57.375)))


def test_feature_norms_are_the_zoos_constants():
    assert NORMS['caffe2'] == (zoo.get_pretrained_cfg('i3d_r50').mean, zoo.get_pretrained_cfg('i3d_r50').std)
    assert NORMS['minus1-1'] == (zoo.get_pretrained_cfg('i3d_inception').mean,
                                 zoo.get_pretrained_cfg('i3d_inception').std)
    assert NORMS['caffe2'] is zoo.CAFFE2_NORM and NORMS['minus1-1'] is zoo.MINUS1_1_NORM


# ---------------------------------------------------------------------------------------- frame count

def test_a_wrong_estimate_is_planned_again_once_with_the_decoded_count():
    asked = []

    def read(n):
        asked.append(n)
        return 12, f'read for {n}'

    assert with_true_frame_count(read, 10) == (12, 'read for 12') and asked == [10, 12]


def test_a_count_that_changes_again_is_a_decode_error_naming_both_counts():
    counts = iter([12, 13])
    with pytest.raises(VideoDecodeError, match=r'frame count changes between decodes \(12 then 13\)'):
        with_true_frame_count(lambda n: (next(counts), None), 10)
    count = FrameCount(10)
    assert not count.settled(12) and count.planned == 12 and count.settled(12)


@pytest.fixture(scope='module')
def short_video(tmp_path_factory):
    return write_synthetic_video(str(tmp_path_factory.mktemp('v') / 'v.mp4'), num_frames=20, height=32, width=48)


@pytest.mark.parametrize('error', [4, -6])
def test_every_reader_plans_with_the_true_count_when_the_container_is_wrong(short_video, monkeypatch, error):
    spec = ViewSampler(ViewSpec(num_frames=4, sampling_rate=3, spatial_crops=1, temporal_clips=3, scale=32,
                                crop_size=32))
    train = TrainSpec(num_frames=4, sampling_rate=3, min_scale=32, max_scale=40, crop_size=32)
    settings = resolve_settings('i3d-r50-10crop', resize='none', crops=1, crop_size=32, snippet=8, stride=4)
    right = (load_views_frames(open_source(short_video), spec),
             load_train_clip(short_video, train, lambda: sample_generator(0, 0, 1)),
             list(stream_video_checked(VideoJob(0, 'v', short_video, 'v'), settings, 2)))
    true_count = VideoFile.num_frames.fget
    monkeypatch.setattr(VideoFile, 'num_frames', property(lambda self: true_count(self) + error))
    (plan, frames), (clip, draw), chunks = (
        load_views_frames(open_source(short_video), spec),
        load_train_clip(short_video, train, lambda: sample_generator(0, 0, 1)),
        list(stream_video_checked(VideoJob(0, 'v', short_video, 'v'), settings, 2)))
    assert plan.num_decoded == 20 and np.array_equal(plan.frames, right[0][0].frames)
    assert np.array_equal(frames, right[0][1])
    assert draw == right[1][1] and np.array_equal(clip, right[1][0])
    again = [c for c in chunks if c.attempt == 1]                  # the second streaming, with the true count
    assert again[-1].meta.num_frames == 20 and len(again) == len(right[2])
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(again, right[2]))


# ------------------------------------------------------------------------------------------ frame rate

def test_the_fps_flag_means_default_native_or_a_rate():
    assert resolve_fps(None, 25.0) == 25.0
    assert resolve_fps(0, 25.0) is None and resolve_fps('native', 25.0) is None
    assert resolve_fps(12.5, 25.0) == 12.5


def fps_model():
    model = torch.nn.Linear(1, 1)
    model.pretrained_cfg = zoo.VideoPretrainedCfg(fps=25.0, num_frames=4, sampling_rate=2, crop_size=48,
                                                  test_scale=48, test_crop_size=48, test_views=(1, 2), num_classes=2,
                                                  label_set='test', class_names=('a', 'b'))
    return model


def scoring_fps(fps):
    config = resolve_config(RunRequest(fps=fps), 'm', fps_model(), {'kind': 'random'}, None, torch.device('cpu'),
                            1, 'now')
    return config.fps


def test_fps_0_is_the_native_rate_in_scoring_and_features_alike():
    assert scoring_fps(0) is None and resolve_settings('i3d-inception', fps=0).fps is None
    assert scoring_fps(None) == 25.0                                   # the model's rate
    assert resolve_settings('i3d-inception').fps is PRESETS['i3d-inception'].fps is None
    assert scoring_fps(15.0) == 15.0 and resolve_settings('i3d-inception', fps=15.0).fps == 15.0


@pytest.mark.parametrize('fps', [-1.0, math.nan])
def test_a_negative_or_nan_fps_is_the_same_error_in_every_job(fps):
    message = f'--fps must be 0 (the native rate) or a positive frame rate, got {fps}'
    model = fps_model()
    spec = ViewSpec(num_frames=4, sampling_rate=2, spatial_crops=1, temporal_clips=1, scale=48, crop_size=48)
    for refuse in (lambda: check_request(RunRequest(fps=fps)), lambda: scoring_fps(fps),
                   lambda: library_config(model, spec, fps=fps),
                   lambda: resolve_settings('i3d-r50-10crop', fps=fps)):
        with pytest.raises(ValueError) as caught:
            refuse()
        assert str(caught.value) == message


def test_both_fps_flags_say_the_same_words():
    def fps_help(parser):
        return next(a.help for a in parser._actions if '--fps' in a.option_strings)
    scoring, features = fps_help(score_parser('x', 'x')), fps_help(feature_parser())
    rule = 'resample video files to this many frames per second; 0: the native rate, no resampling'
    assert scoring.startswith(rule) and features.startswith(rule)
    assert scoring.endswith("(default: the model config's fps)")
    assert features.endswith("(default: the preset's: native)")


# ------------------------------------------------------------------------------ a job's video input

def test_features_and_fvd_read_their_input_through_one_finder(tmp_path):
    """eval.data.records.find_videos: a folder (sub-folders searched), one video file, a list file; both jobs
    that take any videos call it (scoring's --benchmark unlabelled keeps its own reader for now)."""
    import ast
    import pathlib
    from eval.data.records import DataNotFound, find_videos
    from eval.data.synthetic import write_synthetic_video
    (tmp_path / 'sub').mkdir()
    a = write_synthetic_video(str(tmp_path / 'a.mp4'), num_frames=4, height=16, width=16)
    b = write_synthetic_video(str(tmp_path / 'sub' / 'b.mp4'), num_frames=4, height=16, width=16)
    (tmp_path / 'list.txt').write_text('# two videos\nsub/b.mp4\n\na.mp4\n')
    folder, desc = find_videos(str(tmp_path))
    assert [(r.video_id, r.path) for r in folder] == [('a', a), ('sub/b', b)] and 'sub-folders' in desc
    one, desc = find_videos(b)
    assert [(r.video_id, r.path) for r in one] == [('b', b)] and desc == f'video file {b}'
    listed, _ = find_videos(str(tmp_path / 'list.txt'))
    assert [r.path for r in listed] == [b, a]
    with pytest.raises(DataNotFound, match='no such file or folder'):
        find_videos(str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataNotFound, match='no video found'):
        find_videos(str(tmp_path / 'empty'))
    eval_dir = pathlib.Path(__file__).resolve().parents[1] / 'eval'
    for job in ('features/job.py', 'fvd/job.py'):
        names = {a.name for n in ast.walk(ast.parse((eval_dir / job).read_text()))
                 if isinstance(n, ast.ImportFrom) for a in n.names}
        assert 'find_videos' in names and 'read_unlabelled_folder' not in names and 'read_list_file' not in names
