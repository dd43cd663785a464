"""One way of finding videos for every job (eval.data.records.find_videos): a folder searched recursively,
one video file, a list file; symbolic-link loops followed once, dangling links reported; the same videos in
the same order whichever job reads the folder. And the official UCF-101 / HMDB-51 archives found from their
root, with a missing video's reason naming the --data that would find it."""
import json
import os

import numpy as np
import pytest

from eval.data.presets import get_benchmark, read_hmdb51, read_ucf101
from eval.data.records import LabelMap, find_videos, read_class_folders
from eval.data.synthetic import write_synthetic_video
from eval_test_models import NUM_CLASSES
import feature_test_models  # noqa: F401  (registers tiny_feature_net)
import fvd_test_models  # noqa: F401  (registers tiny_fvd_net)


def clip(path, seed=0, frames=20):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    return write_synthetic_video(str(path), num_frames=frames, height=48, width=64, seed=seed)


@pytest.fixture(scope='module')
def tricky(tmp_path_factory):
    """a.mp4; sub/b.mp4; sub/deeper/c.mp4; sub/up -> .. (a loop); link_to_sub -> sub (a folder already searched
    under its own name); dangling.mp4 -> nowhere.mp4; notes.txt (not a video)."""
    root = tmp_path_factory.mktemp('tricky')
    clip(root / 'a.mp4', 1)
    clip(root / 'sub' / 'b.mp4', 2)
    clip(root / 'sub' / 'deeper' / 'c.mp4', 3)
    os.symlink('..', root / 'sub' / 'up')
    os.symlink('sub', root / 'link_to_sub')
    os.symlink('nowhere.mp4', root / 'dangling.mp4')
    (root / 'notes.txt').write_text('not a video\n')
    return root


EXPECTED = ['a', 'dangling', 'sub/b', 'sub/deeper/c']


def summary(records):
    return [(r.video_id, r.path is not None) for r in records]


def test_the_tricky_folder_is_read_once_with_the_dangling_link_reported(tricky):
    records, _ = find_videos(str(tricky))
    assert [r.video_id for r in records] == EXPECTED
    dangling = records[1]
    assert dangling.path is None and 'symbolic link to nowhere.mp4, which does not exist' in dangling.missing
    assert all(r.path is not None and os.path.isfile(r.path) for r in records if r.video_id != 'dangling')


def test_every_job_finds_the_same_videos_in_the_same_order(tricky):
    from eval.features.job import read_inputs
    from eval.fvd.job import read_set
    from eval.fvd.protocols import PROTOCOLS
    features, _ = read_inputs(str(tricky))
    scoring, _ = get_benchmark('unlabelled').read(str(tricky), None, None, LabelMap(()))
    fvd = read_set('real', str(tricky), PROTOCOLS['original'], 0)
    assert summary(features) == summary(scoring) == summary(find_videos(str(tricky))[0])
    assert [job.path for job in fvd.jobs] == [r.path for r in features if r.path]
    assert [m[0] for m in fvd.missing] == ['dangling']


def test_a_dangling_link_in_a_class_folder_is_a_missing_video(tmp_path):
    clip(tmp_path / 'class0' / 'v1.mp4')
    os.symlink('gone.mp4', tmp_path / 'class0' / 'v2.mp4')
    records = read_class_folders(str(tmp_path), LabelMap([f'class{i}' for i in range(NUM_CLASSES)]))
    assert [(r.video_id, r.label, r.path is not None) for r in records] == [('v1', 0, True), ('v2', 0, False)]
    assert 'does not exist' in records[1].missing


def test_jobs_run_on_the_tricky_folder_and_on_one_video(tricky, tmp_path, capsys, monkeypatch):
    """Scoring (unlabelled), features and FVD on the same folder: three videos done, the dangling link missing
    with its reason; scoring and features also take a single video file as --data."""
    import eval.score.cli
    from eval.features.job import main as features_main
    from eval.fvd.job import main as fvd_main
    from feature_test_models import feature_args
    monkeypatch.setenv('ZOO_KEEP_HEAP', '0')          # in-process runs leave the pytest process's heap alone
    score_args = ['--model', 'tiny_video_net', '--random-weights', '--views', '1x2', '--batch-size', '2',
                  '--workers', '0', '--no-progress', '--no-flops', '--benchmark', 'unlabelled', '--max-failed', '0']
    for data, name in ((tricky, 'folder'), (tricky / 'sub' / 'b.mp4', 'one')):
        assert eval.score.cli.main('python -m eval', 'test', score_args + ['--data', str(data),
                                                                          '--out', str(tmp_path / f's-{name}')]) == 0
        assert features_main(feature_args(str(data), str(tmp_path / f'f-{name}'))) == 0
    counts = json.load(open(tmp_path / 's-folder' / 'summary.json'))['counts']
    assert (counts['scored'], counts['missing']) == (3, 1)
    index = json.load(open(tmp_path / 'f-folder' / 'index.json'))
    assert [(v['id'], v['status']) for v in index['videos']] == [
        ('a', 'extracted'), ('dangling', 'missing'), ('sub/b', 'extracted'), ('sub/deeper/c', 'extracted')]
    assert json.load(open(tmp_path / 's-one' / 'summary.json'))['counts']['scored'] == 1
    assert json.load(open(tmp_path / 'f-one' / 'index.json'))['counts']['finished'] == 1
    fvd = ['--model', 'tiny_fvd_net', '--random-weights', '--frames', '9', '--workers', '0', '--threads', '1',
           '--no-progress', '--real', str(tricky), '--fake', str(tricky), '--out', str(tmp_path / 'fvd')]
    import torch
    threads = torch.get_num_threads()
    try:
        assert fvd_main(fvd, keep_heap=False) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.load(open(tmp_path / 'fvd' / 'fvd.json'))
    assert doc['counts']['sets']['real'] == {'embedded': 3, 'refused': 0, 'failed': 0, 'missing': 1}
    assert doc['fvd'] == pytest.approx(0, abs=1e-6)


# --------------------------------------------------------------------------- official archives, from the root

def ucf_lists(folder):
    folder.mkdir(parents=True)
    (folder / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 YoYo\n')
    (folder / 'testlist01.txt').write_text('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n')


def test_ucf101_archive_is_scored_from_its_root(tmp_path):
    """UCF101.rar extracts to UCF-101/<Class>/v_*.avi; UCF101TrainTestSplits-RecognitionTask.zip to
    ucfTrainTestlist/: --data is the folder holding both."""
    ucf_lists(tmp_path / 'ucfTrainTestlist')
    clip(tmp_path / 'UCF-101' / 'ApplyEyeMakeup' / 'v_ApplyEyeMakeup_g01_c01.avi', 1)
    clip(tmp_path / 'UCF-101' / 'YoYo' / 'v_YoYo_g01_c01.avi', 2)
    records, desc = read_ucf101(str(tmp_path), None, '1', LabelMap(('ApplyEyeMakeup', 'YoYo')))
    assert [r.path is not None for r in records] == [True, True] and f'{tmp_path}/UCF-101' in desc


def test_hmdb51_archive_is_scored_from_its_root(tmp_path):
    splits = tmp_path / 'testTrainMulti_7030_splits'
    splits.mkdir()
    (splits / 'brush_hair_test_split1.txt').write_text('a_brush_hair.avi 2 \n')
    (splits / 'cartwheel_test_split1.txt').write_text('b_cartwheel.avi 2 \n')
    clip(tmp_path / 'hmdb51_org' / 'brush_hair' / 'a_brush_hair.avi', 1)
    clip(tmp_path / 'hmdb51_org' / 'cartwheel' / 'b_cartwheel.avi', 2)
    records, _ = read_hmdb51(str(tmp_path), None, '1', LabelMap(('brush_hair', 'cartwheel')))
    assert [r.path is not None for r in records] == [True, True]


def test_a_listed_video_one_folder_down_names_the_data_that_finds_it(tmp_path):
    ucf_lists(tmp_path / 'ucfTrainTestlist')
    clip(tmp_path / 'my_videos' / 'ApplyEyeMakeup' / 'v_ApplyEyeMakeup_g01_c01.avi', 1)
    clip(tmp_path / 'my_videos' / 'YoYo' / 'v_YoYo_g01_c01.avi', 2)
    labels = LabelMap(('ApplyEyeMakeup', 'YoYo'))
    records, _ = read_ucf101(str(tmp_path), None, '1', labels)
    assert records[0].path is None
    assert records[0].missing.endswith(f'it is under {tmp_path}/my_videos: give --data {tmp_path}/my_videos')
    found, _ = read_ucf101(str(tmp_path / 'my_videos'), None, '1', labels)     # the split lists one folder up
    assert [r.path is not None for r in found] == [True, True]


def test_kinetics_front_end_predicts_one_video_file(tricky, tmp_path, capsys):
    """`python -m eval.kinetics --data clip.mp4` read the video as a list file (a UnicodeDecodeError); it is
    one unlabelled video now: scored, its prediction written, no accuracy claimed."""
    import eval.kinetics
    args = ['--model', 'tiny_video_net', '--random-weights', '--views', '1x2', '--batch-size', '2', '--workers', '0',
            '--no-progress', '--no-flops', '--data', str(tricky / 'a.mp4'), '--out', str(tmp_path / 'one')]
    assert eval.kinetics.main(args) == 0
    counts = json.load(open(tmp_path / 'one' / 'summary.json'))['counts']
    assert counts['scored'] == 1 and 'predictions only' in capsys.readouterr().out


def test_a_folder_that_cannot_be_listed_is_reported_not_a_traceback(tmp_path, monkeypatch):
    """Root reads every folder, so the permission error is made by hand: os.scandir of 'locked' fails."""
    import eval.data.records as records
    clip(tmp_path / 'a.mp4')
    (tmp_path / 'locked').mkdir()
    real_scandir = os.scandir

    def scandir(path='.'):
        if str(path).endswith('locked'):
            raise PermissionError(13, 'Permission denied')
        return real_scandir(path)

    monkeypatch.setattr(records.os, 'scandir', scandir)
    found, _ = find_videos(str(tmp_path))
    assert [(r.video_id, r.path is not None) for r in found] == [('a', True), ('locked', False)]
    assert 'cannot list folder' in found[1].missing and 'Permission denied' in found[1].missing
