"""The train mode of the data pipeline: clip starts, scales, crops and flips follow the Caffe2 recipe's
distributions (seeded, checked against the formulas), the pixels are the drawn window of the video, and the
epoch order and its split into micro-batches do not depend on workers or ranks."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from eval.data.synthetic import synthetic_frames, write_frame_folder
from eval.data.train_clips import (BatchPlan, RankBatchSampler, TrainClipDataset, TrainSpec, draw_crop, draw_flip,
                             draw_scale, draw_start, epoch_order, load_train_clip, sample_generator)
from eval.data.records import VideoRecord
from eval.data.views import clips_from_starts, scaled_size

DRAWS = 20000


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


# 99.9% quantiles of the chi-square distribution (scipy.stats.chi2.ppf(0.999, df)), for the uniformity checks
CHI2_999 = {32: 62.49, 64: 104.72, 15: 37.70}


def test_clip_start_is_uniform_over_0_to_n_minus_span():
    n, frames, rate = 40, 4, 2                                   # starts 0..32: 33 values
    starts = np.array([draw_start(sample_generator(0, 0, i), n, frames, rate) for i in range(DRAWS)])
    assert starts.min() == 0 and starts.max() == n - frames * rate
    counts = np.bincount(starts, minlength=33)
    assert chi_square(counts) < CHI2_999[32]
    assert abs(starts.mean() - (n - frames * rate) / 2) < 4 * np.sqrt((33 ** 2 - 1) / 12 / DRAWS)


def test_a_video_shorter_than_the_clip_starts_at_0_and_wraps():
    assert {draw_start(sample_generator(3, 1, i), 5, 4, 2) for i in range(100)} == {0}
    assert clips_from_starts([0], 5, 4, 2).tolist() == [[0, 2, 4, 1]]          # (0 + 2j) mod 5
    assert clips_from_starts([7], 10, 3, 2).tolist() == [[7, 9, 1]]


def test_scale_is_uniform_over_the_integers_256_to_320():
    spec = TrainSpec(32, 2)
    scales = np.array([draw_scale(sample_generator(1, 2, i), spec) for i in range(DRAWS)])
    assert scales.min() == 256 and scales.max() == 320
    assert chi_square(np.bincount(scales - 256, minlength=65)) < CHI2_999[64]


def test_crop_corner_is_uniform_over_every_position():
    tops, lefts = zip(*(draw_crop(sample_generator(2, 0, i), 239, 256, 224) for i in range(DRAWS)))
    tops, lefts = np.array(tops), np.array(lefts)
    assert (tops.min(), tops.max(), lefts.min(), lefts.max()) == (0, 15, 0, 32)
    assert chi_square(np.bincount(tops, minlength=16)) < CHI2_999[15]
    assert chi_square(np.bincount(lefts, minlength=33)) < CHI2_999[32]


def test_flip_has_probability_one_half():
    flips = np.array([draw_flip(sample_generator(4, 0, i), 0.5) for i in range(DRAWS)])
    assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / DRAWS)


def test_default_scale_range_is_caffe2s_for_224_and_proportional_for_small_crops():
    class Cfg:
        num_frames, sampling_rate, crop_size = 32, 2, 224
    assert TrainSpec.from_cfg(Cfg) == TrainSpec(32, 2, 256, 320, 224, 0.5)
    small = TrainSpec.from_cfg(Cfg, frames=8, crop=56)
    assert (small.num_frames, small.min_scale, small.max_scale, small.crop_size) == (8, 64, 80, 56)
    with pytest.raises(ValueError, match='larger than the smallest short side'):
        TrainSpec(8, 2, 40, 50, 48)


@pytest.fixture(scope='module')
def frame_folder(tmp_path_factory):
    """A 30-frame JPEG folder of 60x80 frames (decoded by PIL exactly, so the reference can be recomputed)."""
    folder = str(tmp_path_factory.mktemp('train') / 'clip')
    write_frame_folder(folder, synthetic_frames(30, 60, 80, seed=5))
    return folder


def reference_clip(folder: str, spec: TrainSpec, seed: int, epoch: int, index: int):
    """The clip computed by hand from the formulas: the same generator's draws in the stated order (start,
    scale, then crop corner, flip), frames (start + j * rate) mod N, PIL bilinear resize of the short side,
    the crop, the mirror."""
    names = sorted(os.listdir(folder), key=lambda n: int(n.split('_')[1].split('.')[0]))
    n = len(names)
    rng = sample_generator(seed, epoch, index)
    start = int(rng.integers(0, max(n - spec.num_frames * spec.sampling_rate, 0) + 1))
    scale = int(rng.integers(spec.min_scale, spec.max_scale + 1))
    h, w = scaled_size(60, 80, scale)
    top, left = int(rng.integers(0, h - spec.crop_size + 1)), int(rng.integers(0, w - spec.crop_size + 1))
    flip = rng.random() < spec.flip_prob
    frames = []
    for j in range(spec.num_frames):
        with Image.open(os.path.join(folder, names[(start + j * spec.sampling_rate) % n])) as image:
            pixels = np.asarray(image.convert('RGB').resize((w, h), Image.BILINEAR))
        crop = pixels[top:top + spec.crop_size, left:left + spec.crop_size]
        frames.append(crop[:, ::-1] if flip else crop)
    return np.stack(frames), (start, scale, top, left, bool(flip))


@pytest.mark.parametrize('index', range(6))
def test_training_clip_is_the_drawn_window_of_the_video(frame_folder, index):
    spec = TrainSpec(num_frames=8, sampling_rate=2, min_scale=64, max_scale=80, crop_size=56)
    clip, draw = load_train_clip(frame_folder, spec, lambda: sample_generator(7, 3, index))
    expected, draws = reference_clip(frame_folder, spec, 7, 3, index)
    assert (draw.start, draw.scale, draw.top, draw.left, draw.flip) == draws
    assert clip.shape == (8, 56, 56, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, expected)


def test_a_short_video_wraps_in_the_decoded_clip(frame_folder):
    spec = TrainSpec(num_frames=20, sampling_rate=2, min_scale=60, max_scale=60, crop_size=60, flip_prob=0.0)
    clip, draw = load_train_clip(frame_folder, spec, lambda: sample_generator(0, 0, 0))
    expected, _ = reference_clip(frame_folder, spec, 0, 0, 0)
    assert draw.start == 0 and np.array_equal(clip, expected)
    assert np.array_equal(clip[15], clip[0])                   # frame 30 of a 30-frame video is frame 0


def test_real_mp4_clip_is_sampled_at_the_drawn_scale(shared_dir):
    path = os.path.join(shared_dir, 'data', 'kinetics-clips', 'arm_wrestling.mp4')
    if not os.path.isfile(path):
        pytest.skip(f'{path} is absent')
    spec = TrainSpec(num_frames=4, sampling_rate=2, min_scale=64, max_scale=80, crop_size=56)
    clip, draw = load_train_clip(path, spec, lambda: sample_generator(0, 0, 1))
    assert clip.shape == (4, 56, 56, 3)
    h, w = scaled_size(256, 340, draw.scale)
    assert h == draw.scale and draw.top <= h - 56 and draw.left <= w - 56


def test_clips_do_not_depend_on_the_number_of_loader_workers(frame_folder):
    records = [VideoRecord(f'v{i}', frame_folder, label=i) for i in range(4)]
    dataset = TrainClipDataset(records, TrainSpec(4, 2, 64, 80, 56), seed=3)
    dataset.set_epoch(2)

    def load(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers)
        return torch.cat([clips for clips, _, _ in loader])
    assert torch.equal(load(0), load(2))


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(50, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(50, seed=2, epoch=0))


@pytest.mark.parametrize('per_rank,world,accum', [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)])
def test_every_split_of_a_global_batch_of_4_sees_the_same_clips(per_rank, world, accum):
    plan = BatchPlan(per_rank, world, accum)
    order = epoch_order(11, seed=0, epoch=0)
    assert plan.global_batch == 4 and plan.steps_per_epoch(11) == 2      # the incomplete last batch is dropped
    for step in range(2):
        seen = [i for r in range(world) for a in range(accum) for i in plan.micro_batch(order, step, a, r)]
        assert sorted(seen) == sorted(order[4 * step:4 * step + 4].tolist())


def test_rank_sampler_resumed_at_a_step_yields_the_rest_of_the_epoch():
    plan = BatchPlan(2, world_size=2, accum_steps=2)
    full = list(RankBatchSampler(plan, 25, seed=4, epoch=1, rank=1))
    assert len(full) == 3 * 2
    assert list(RankBatchSampler(plan, 25, seed=4, epoch=1, rank=1, start_step=2)) == full[4:]
