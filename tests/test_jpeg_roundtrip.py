"""The JPEG round trip of the i3d-r50-10crop preset (eval.data.jpeg_roundtrip) against ffmpeg's own frame dump:
``ffmpeg -i VIDEO -start_number 0 DIR/%d.jpg`` run here with the pinned binary writes the folder the public
10-crop tool reads; our piped JPEGs must be those files byte for byte, and features from the video must equal
features from that folder. Skipped when no ffmpeg is installed (imageio-ffmpeg is a dependency, so only a
broken install skips)."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import feature_test_models  # noqa: F401  (registers tiny_feature_net)
from eval.data.jpeg_roundtrip import ffmpeg_identity, ffmpeg_jpegs, pinned_ffmpeg, require_ffmpeg, split_jpegs

CLIPS = ('arm_wrestling.mp4', 'cleaning_pool.mp4')
SMALL = dict(resize='48x40', crop_size=32)


@pytest.fixture(scope='module')
def ffmpeg():
    exe = pinned_ffmpeg()
    if exe is None:
        pytest.skip('no ffmpeg: imageio-ffmpeg is not installed')
    return exe


def dump(exe, video, folder):
    """The public tool's step, exactly: ffmpeg -i VIDEO -start_number 0 DIR/%d.jpg."""
    os.makedirs(folder)
    subprocess.run([exe, '-nostdin', '-v', 'error', '-i', video, '-start_number', '0', os.path.join(folder, '%d.jpg')],
                   check=True)
    return [os.path.join(folder, f'{i}.jpg') for i in range(len(os.listdir(folder)))]


def without_comment(data: bytes) -> bytes:
    """A JPEG without its COM segments (ffmpeg writes its encoder version there, e.g. 'Lavc61.3.100')."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        marker = data[pos:pos + 2]
        length = int.from_bytes(data[pos + 2:pos + 4], 'big')
        if marker == b'\xff\xda':                     # start of scan: the rest is image data
            return bytes(out + data[pos:])
        if marker != b'\xff\xfe':
            out += data[pos:pos + 2 + length]
        pos += 2 + length
    return bytes(out)


@pytest.fixture(scope='module')
def dumps(ffmpeg, shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('ffmpeg-dump')
    videos = {name: os.path.join(shared_dir, 'data', 'kinetics-clips', name) for name in CLIPS}
    return {name: (video, dump(ffmpeg, video, str(root / name.split('.')[0]))) for name, video in videos.items()}


@pytest.mark.parametrize('name', CLIPS)
def test_piped_jpegs_are_ffmpegs_files_byte_for_byte(ffmpeg, dumps, name):
    video, files = dumps[name]
    piped = list(ffmpeg_jpegs(video, ffmpeg, chunk=4096))           # small reads: JPEGs split across chunks
    assert len(piped) == len(files) > 200
    assert all(p == open(f, 'rb').read() for p, f in zip(piped, files))


def test_another_ffmpeg_build_agrees_except_its_version_comment(ffmpeg, dumps, tmp_path):
    """Measured: Debian 12's ffmpeg 5.1.9 writes every byte of image data as the pinned 7.0.2-static does; only
    the COM segment naming the encoder (Lavc59.37.100 vs Lavc61.3.100) differs, so the pixels are equal."""
    other = shutil.which('ffmpeg')
    if other is None or os.path.realpath(other) == os.path.realpath(ffmpeg):
        pytest.skip('no second ffmpeg build on PATH')
    video, files = dumps['arm_wrestling.mp4']
    theirs = dump(other, video, str(tmp_path / 'other'))
    assert len(theirs) == len(files)
    assert all(without_comment(open(a, 'rb').read()) == without_comment(open(b, 'rb').read())
               for a, b in zip(theirs, files))


def test_features_from_the_video_equal_features_from_ffmpegs_folder(dumps, tmp_path):
    """i3d-r50-10crop (round trip on by default) on the .mp4, and on ffmpeg's dumped folder (read as a frame
    folder, as the public tool reads it): the same arrays. Without the round trip they differ."""
    import torch
    import zoo
    from eval.features.job import extract
    torch.manual_seed(0)
    model = zoo.create_model('tiny_feature_net')
    video, files = dumps['cleaning_pool.mp4']
    from_video, info = extract(model, video, preset='i3d-r50-10crop', **SMALL)
    from_folder, _ = extract(model, os.path.dirname(files[0]), preset='i3d-r50-10crop', **SMALL)
    np.testing.assert_allclose(from_video, from_folder, rtol=1e-6, atol=0)
    assert info['settings']['jpeg_roundtrip'] is True
    assert 'ffmpeg -i VIDEO -start_number 0' in info['preprocessing']['jpeg_roundtrip']
    direct, _ = extract(model, video, preset='i3d-r50-10crop', jpeg_roundtrip=False, **SMALL)
    assert np.abs(direct - from_video).max() > 1e-3 * np.abs(from_video).max()


def test_the_run_records_which_ffmpeg_made_the_jpegs(ffmpeg, dumps, tmp_path, monkeypatch):
    from eval.features.job import main
    from feature_test_models import feature_args
    monkeypatch.setenv('ZOO_KEEP_HEAP', '0')
    video, _ = dumps['arm_wrestling.mp4']
    assert main(feature_args(video, str(tmp_path / 'out'), '--preset', 'i3d-r50-10crop')) == 0
    manifest = json.load(open(tmp_path / 'out' / 'manifest.json'))
    recorded = manifest['identity']['ffmpeg']
    assert recorded['sha256'] == ffmpeg_identity(ffmpeg)['sha256'] and recorded['version'].startswith('ffmpeg version')


def test_a_missing_ffmpeg_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    from eval.features.job import main
    from feature_test_models import feature_args
    monkeypatch.setenv('ZOO_KEEP_HEAP', '0')
    monkeypatch.setenv('ZOO_FFMPEG', str(tmp_path / 'no-ffmpeg'))
    with pytest.raises(ValueError, match='not an executable file'):
        require_ffmpeg()
    assert main(feature_args(str(tmp_path), str(tmp_path / 'out'), '--preset', 'i3d-r50-10crop')) == 2
    err = capsys.readouterr().err
    assert 'ZOO_FFMPEG' in err and not os.path.exists(tmp_path / 'out' / 'manifest.json')
    with pytest.raises(ValueError, match='--fps cannot apply'):
        from eval.features.presets import resolve_settings
        resolve_settings('i3d-r50-10crop', fps=10)


def test_split_jpegs_keeps_a_partial_file_for_the_next_read():
    a, b = b'\xff\xd8' + b'\x01\xff\x00\x02' + b'\xff\xd9', b'\xff\xd8' + b'\x03' + b'\xff\xd9'
    buffer = bytearray(a + b[:3])
    files, used = split_jpegs(buffer)
    assert files == [a] and used == len(a)
    files, used = split_jpegs(bytearray(b[:3] + b[3:]))
    assert files == [b]
