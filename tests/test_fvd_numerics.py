"""FVD's numerics against independent references: each protocol's resize against a hand-written loop of its
stated semantics, the Fréchet distance against an eigendecomposition and SciPy, the statistics against
numpy's covariance, the statistics file's round trip and refusal, the input checks. No network runs here."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.fvd.clips import ClipJob, clip_rng, sample_videos
from eval.fvd.embed import as_pixels
from eval.fvd.frechet import Distance, Stats, _qualify, frechet_distance, statistics
from eval.fvd.preprocess import clip_indices, resize_frames, scale_values, tf1_resize_bilinear
from eval.fvd.protocols import PROTOCOLS, resolve_protocol
from eval.fvd.statsfile import StatsMismatch, load_stats, read_stats, save_stats


# ----------------------------------------------------------------------------------------- resizes

def tf1_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False), one pixel at a time: output pixel
    (y, x) samples the input at (y * in_h / out_h, x * in_w / out_w), float32 as TF computes it."""
    in_h, in_w, _ = image.shape
    img = image.astype(np.float32)
    out = np.zeros((out_h, out_w, image.shape[2]), np.float32)
    sy, sx = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    for y in range(out_h):
        fy = np.float32(y) * sy
        y0, y1 = int(math.floor(fy)), min(int(math.ceil(fy)), in_h - 1)
        ly = np.float32(fy - np.float32(math.floor(fy)))
        for x in range(out_w):
            fx = np.float32(x) * sx
            x0, x1 = int(math.floor(fx)), min(int(math.ceil(fx)), in_w - 1)
            lx = np.float32(fx - np.float32(math.floor(fx)))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[y, x] = top + (bottom - top) * ly
    return out


def half_pixel_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear with half-pixel centres (PyTorch align_corners=False, no antialias), in float64: output pixel
    centre (i + 0.5) maps to input (i + 0.5) * in / out - 0.5, clamped at 0, neighbours clamped at the edge."""
    in_h, in_w, _ = image.shape
    img = image.astype(np.float64)

    def axis(out_n, in_n):
        src = np.maximum((np.arange(out_n) + 0.5) * in_n / out_n - 0.5, 0)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, in_n - 1), src - lo

    y0, y1, ly = axis(out_h, in_h)
    x0, x1, lx = axis(out_w, in_w)
    out = np.zeros((out_h, out_w, image.shape[2]))
    for y in range(out_h):
        for x in range(out_w):
            top = img[y0[y], x0[x]] * (1 - lx[x]) + img[y0[y], x1[x]] * lx[x]
            bottom = img[y1[y], x0[x]] * (1 - lx[x]) + img[y1[y], x1[x]] * lx[x]
            out[y, x] = top * (1 - ly[y]) + bottom * ly[y]
    return out


@pytest.mark.parametrize('in_hw,out_hw', [((7, 5), (13, 11)), ((13, 17), (5, 6)), ((64, 48), (30, 30)),
                                          ((6, 6), (6, 6))])
def test_tf1_resize_matches_its_stated_semantics(in_hw, out_hw):
    image = np.random.default_rng(1).integers(0, 256, size=in_hw + (3,), dtype=np.uint8)
    ours = tf1_resize_bilinear(torch.from_numpy(image)[None], *out_hw)[0].numpy()
    reference = tf1_reference(image, *out_hw)
    np.testing.assert_array_equal(ours, reference)      # the same float32 operations in the same order


def test_tf1_resize_is_not_pytorchs_half_pixel_bilinear():
    """The legacy scaler is why the original's numbers differ from ports that use F.interpolate: on a 64 -> 224
    upscale they disagree by whole grey levels."""
    image = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    ours = tf1_resize_bilinear(torch.from_numpy(image)[None], 224, 224)[0].numpy()
    torch_half = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(224, 224),
                               mode='bilinear', align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - torch_half).max() > 10
    # the legacy grid is shifted by half an input pixel: output row 0 is input row 0 exactly
    np.testing.assert_array_equal(ours[0, 0], image[0, 0].astype(np.float32))


@pytest.mark.parametrize('protocol', ['stylegan-v-16f', 'tats'])
def test_torch_bilinear_protocols_match_half_pixel_reference(protocol):
    frames = np.random.default_rng(3).integers(0, 256, size=(2, 19, 23, 3), dtype=np.uint8)
    p = resolve_protocol(protocol, size=16)
    ours = resize_frames(torch.from_numpy(frames), p).numpy()
    for t in range(2):
        np.testing.assert_allclose(ours[t], half_pixel_reference(frames[t], 16, 16), rtol=0, atol=1e-3)


@pytest.mark.parametrize('hw,resized,offset', [((24, 40), (16, 27), (0, 5)), ((40, 24), (27, 16), (5, 0)),
                                               ((20, 20), (16, 16), (0, 0))])
def test_videogpt_short_side_and_centre_crop(hw, resized, offset):
    """Short side to 16, the long side ceil(long * 16 / short) (40 * 16 / 24 = 26.67 -> 27), then the centre
    crop at floor((27 - 16) / 2) = 5."""
    frames = np.random.default_rng(4).integers(0, 256, size=(1,) + hw + (3,), dtype=np.uint8)
    ours = resize_frames(torch.from_numpy(frames), resolve_protocol('videogpt', size=16))[0].numpy()
    full = half_pixel_reference(frames[0], *resized)
    expected = full[offset[0]:offset[0] + 16, offset[1]:offset[1] + 16]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


def test_value_scalings_map_0_255_to_minus1_1():
    x = torch.tensor([0.0, 127.5, 255.0])
    for name in ('original', 'stylegan-v-16f'):
        np.testing.assert_allclose(scale_values(x, PROTOCOLS[name]).numpy(), [-1, 0, 1], atol=1e-7)


# ------------------------------------------------------------------------------------------ Fréchet

def random_stats(seed: int, dim: int = 12, n: int = 40, covariance: str = 'unbiased') -> Stats:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) + rng.standard_normal(dim)
    return statistics(x.astype(np.float32), covariance)


def eig_reference(a: Stats, b: Stats) -> float:
    """Independent: sqrt(S1) by eigh, then Tr sqrt(sqrt(S1) S2 sqrt(S1)) as the sum of the roots of its eigenvalues."""
    w, v = np.linalg.eigh(a.sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ b.sigma @ root)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize('sqrt', ['svd', 'sqrtm'])
def test_frechet_distance_matches_an_eigendecomposition(sqrt):
    a, b = random_stats(1), random_stats(2)
    d = frechet_distance(a, b, sqrt)
    assert d.value == pytest.approx(eig_reference(a, b), rel=1e-9)
    assert d.value > 1 and d.notes == [] and d.trusted


def test_sqrtm_protocol_is_scipys_real_part():
    from scipy import linalg
    a, b = random_stats(3, covariance='biased'), random_stats(4, covariance='biased')
    root = linalg.sqrtm(a.sigma @ b.sigma)
    diff = a.mu - b.mu
    expected = float(np.real(diff @ diff + np.trace(a.sigma + b.sigma - 2 * root)))
    assert frechet_distance(a, b, 'sqrtm').value == pytest.approx(expected, rel=1e-12)


def test_statistics_use_the_protocols_covariance():
    x = np.random.default_rng(5).standard_normal((30, 6)).astype(np.float32)
    np.testing.assert_allclose(statistics(x, 'unbiased').sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(statistics(x, 'biased').sigma, np.cov(x.astype(np.float64), rowvar=False, bias=True),
                               rtol=1e-12)
    np.testing.assert_allclose(statistics(x, 'biased').mu, x.astype(np.float64).mean(0), rtol=1e-12)


def test_statistics_refuse_bad_sets():
    with pytest.raises(ValueError, match='at least 2 videos'):
        statistics(np.zeros((1, 4), np.float32), 'unbiased')
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match='1 of 3 embeddings are not finite'):
        statistics(x, 'unbiased')


def test_identical_sets_are_zero_and_a_negative_result_is_never_a_bare_number():
    a = random_stats(6)
    assert abs(frechet_distance(a, a, 'svd').value) < 1e-8
    negative = Distance(-1e-6, 0.0, -1e-6, min_eigenvalues=(1.0, 1.0))
    notes = _qualify(negative, a, a)
    assert any(n.startswith('UNRELIABLE: negative') for n in notes)


def test_near_singular_covariances_are_reported():
    """16 videos in 40 dimensions: both covariances are rank deficient; sqrtm of their product is then
    ill-conditioned. The result says so (rank, smallest eigenvalue, what sqrtm dropped or warned)."""
    a, b = random_stats(7, dim=40, n=16, covariance='biased'), random_stats(8, dim=40, n=16, covariance='biased')
    d = frechet_distance(a, b, 'sqrtm')
    assert sum('rank deficient' in n for n in d.notes) == 2
    assert len(d.min_eigenvalues) == 2 and min(d.min_eigenvalues) < 1e-6
    assert d.value == pytest.approx(eig_reference(a, b), rel=1e-4)


# ------------------------------------------------------------------------------------ protocols, stats

def test_a_changed_protocol_is_never_cited_under_the_presets_name():
    assert resolve_protocol('stylegan-v-16f').name == 'stylegan-v-16f'
    assert resolve_protocol('stylegan-v-16f', frames=16).name == 'stylegan-v-16f'
    custom = resolve_protocol('stylegan-v-16f', covariance='unbiased')
    assert custom.name == 'stylegan-v-16f+custom' and 'unbiased' in custom.describe()
    assert resolve_protocol('original', frames='all').frames is None
    with pytest.raises(ValueError, match='unknown FVD protocol'):
        resolve_protocol('fvd-2048')
    with pytest.raises(TypeError, match='unknown FVD setting'):
        resolve_protocol('original', crop=3)
    sub = PROTOCOLS['stylegan-v-128f-subsample8f']
    assert (sub.frames, sub.step, sub.span) == (16, 8, 121)


def test_every_preset_describes_every_knob():
    for protocol in PROTOCOLS.values():
        line = protocol.describe()
        for word in (protocol.name, 'I3D', 'float64', str(protocol.size)):
            assert word in line
        assert protocol.sources


def test_stats_file_round_trip_and_refusal(tmp_path):
    protocol = PROTOCOLS['stylegan-v-16f']
    network = {'model': 'i3d_inception', 'state_dict_sha256': 'ab' * 32, 'precision': 'fp32', 'fast_path': True}
    stats = random_stats(9, covariance='biased')
    path = str(tmp_path / 'real.npz')
    save_stats(path, stats, protocol, network)
    loaded = load_stats(path, protocol, network)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == stats.n and read_stats(path)[1]['description'] == protocol.describe()
    with pytest.raises(StatsMismatch) as e:
        load_stats(path, PROTOCOLS['original'], {**network, 'precision': 'bf16'})
    for field in ('resize', 'covariance', 'sqrt', 'clip', 'num_videos', 'network precision'):
        assert field in str(e.value)
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    with pytest.raises(ValueError, match='junk.npz: not an FVD statistics file'):
        read_stats(str(tmp_path / 'junk.npz'))


# ------------------------------------------------------------------------------------- input videos

def test_input_layouts_and_ranges_agree():
    u8 = np.random.default_rng(10).integers(0, 256, size=(2, 5, 6, 7, 3), dtype=np.uint8)
    expected = torch.from_numpy(u8).float()
    channels_first = torch.from_numpy(u8).permute(0, 4, 1, 2, 3)
    minus1_1 = channels_first.float() / 127.5 - 1
    np.testing.assert_array_equal(as_pixels(u8).numpy(), expected.numpy())
    np.testing.assert_allclose(as_pixels(minus1_1).numpy(), expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(as_pixels(channels_first.float() / 255, value_range='0-1').numpy(), expected.numpy(),
                               atol=1e-4)
    np.testing.assert_array_equal(as_pixels(channels_first).numpy(), expected.numpy())   # uint8 NCTHW found by shape


def test_bad_input_videos_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r'could be \[0, 1\] or \[-1, 1\]'):
        as_pixels(torch.rand(2, 3, 4, 8, 8))
    with pytest.raises(ValueError, match='NaN or infinite'):
        as_pixels(torch.full((2, 3, 4, 8, 8), float('nan')))
    with pytest.raises(ValueError, match='expected 5 dimensions'):
        as_pixels(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r'expected \(N, T, H, W, 3\)'):
        as_pixels(np.zeros((2, 4, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match='declared 0-1 have values'):
        as_pixels(torch.full((2, 3, 4, 8, 8), 2.0), value_range='0-1')


def test_clip_positions_and_short_videos():
    p = resolve_protocol('stylegan-v-128f-subsample8f')
    rng = np.random.default_rng(0)
    assert list(clip_indices(121, p, rng)) == list(range(0, 121, 8))
    with pytest.raises(ValueError, match='120 frames, the protocol needs 121'):
        clip_indices(120, p, rng)
    centre = resolve_protocol('original', clip='centre')
    assert clip_indices(30, centre, rng)[0] == 7
    job = ClipJob(0, 'real', 5, 'x.mp4')
    starts = {int(clip_indices(500, p, clip_rng(p, job))[0]) for _ in range(3)}
    assert len(starts) == 1                           # the same start whoever reads the video, however often


def test_num_videos_sampling_is_seeded_and_refuses_small_sets():
    a = sample_videos(100, 10, seed=0, set_name='real')
    assert list(a) == sorted(a) and len(set(a)) == 10
    assert list(a) == list(sample_videos(100, 10, seed=0, set_name='real'))
    assert list(a) != list(sample_videos(100, 10, seed=1, set_name='real'))
    assert list(sample_videos(5, None, 0, 'fake')) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match='has 5 videos; the protocol takes 2048'):
        sample_videos(5, 2048, 0, 'fake')
