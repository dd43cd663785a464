"""The decode additions the feature extractor uses: frames at their stored size (scale=None), streaming every
frame once (iter_frames, also resampled), and the exact-size resize."""
import numpy as np
import pytest
from PIL import Image

from eval.data.decode import iter_frames, open_source, resize_exact
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_synthetic_video


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return write_synthetic_video(str(tmp_path_factory.mktemp('decode') / 'clip.mp4'), num_frames=30, height=40,
                                 width=64, fps=30)


def test_scale_none_reads_frames_at_their_stored_size(video, tmp_path):
    assert open_source(video).read([0, 29], None).frames.shape == (2, 40, 64, 3)
    folder = write_frame_folder(str(tmp_path / 'f'), synthetic_frames(3, 40, 64))
    assert open_source(folder).read([2], None).frames.shape == (1, 40, 64, 3)


def test_streamed_frames_equal_the_random_access_read(video):
    source = open_source(video)
    streamed = list(iter_frames(source))
    assert [i for i, _ in streamed] == list(range(30))
    read = source.read([0, 13, 29], None).frames
    for k, i in enumerate((0, 13, 29)):
        np.testing.assert_array_equal(streamed[i][1], read[k])


@pytest.mark.parametrize('fps', [12, 45])
def test_streamed_resampling_numbers_frames_as_read_does(video, fps):
    # 30 fps source: at 12 fps output frame n is source frame floor(n * 2.5) (12 frames); at 45 fps some
    # source frames are shown twice (45 frames)
    source = open_source(video, fps=fps)
    streamed = list(iter_frames(source))
    assert len(streamed) == source.num_frames == {12: 12, 45: 45}[fps]
    read = source.read(range(source.num_frames), None).frames
    for i, frame in streamed:
        np.testing.assert_array_equal(frame, read[i])


def test_resize_exact_is_pil_at_that_size_ignoring_the_aspect():
    frame = synthetic_frames(1, 40, 64)[0]
    out = resize_exact(frame, 30, 34, 'lanczos')
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(frame).resize((34, 30), Image.LANCZOS)))
    assert resize_exact(frame, 40, 64) is frame                   # already that size: untouched
