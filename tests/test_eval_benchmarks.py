"""Benchmark presets and the engine's exit status: the seed's layout, nothing found, failures against
--max-failed, unlabelled folders, UCF-101 and HMDB-51 split files, and the generic front end."""
import csv
import json
import os

import numpy as np
import pytest

import eval.score.cli
import eval.kinetics
from eval.data.presets import get_benchmark, hmdb51_classes, read_hmdb51, read_ucf101, ucf101_classes
from eval.data.records import DataNotFound, LabelMap, read_dataset
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_synthetic_video
from eval_test_models import NUM_CLASSES

TINY = ['--model', 'tiny_video_net', '--random-weights', '--views', '1x2', '--batch-size', '2', '--workers', '0',
        '--no-progress', '--no-flops']


def run(argv, capsys, front_end=eval.kinetics.main):
    try:
        code = front_end(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generic(argv):
    return eval.score.cli.main('python -m eval', 'test', argv)


def clip(path, seed=0, frames=12):
    return write_synthetic_video(str(path), num_frames=frames, height=48, width=64, seed=seed)


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['label', 'youtube_id', 'time_start', 'time_end', 'split'])
        writer.writerows(rows)


# ------------------------------------------------------------------------------------ the seed's layout

@pytest.fixture(scope='module')
def seed_layout(tmp_path_factory):
    """ROOT/annotations/kinetics-400_val.csv and ROOT/frames/<label>/<youtube_id>_<start>_<end>/image_00001.jpg."""
    root = tmp_path_factory.mktemp('seed')
    rows = []
    for i in range(3):
        yid = f'seedvideo{i:02d}'
        rows.append([f'class{i}', yid, 4, 14, 'val'])
        write_frame_folder(str(root / 'frames' / f'class{i}' / f'{yid}_000004_000014'),
                           synthetic_frames(10, 48, 64, seed=i))
    write_csv(str(root / 'annotations' / 'kinetics-400_val.csv'), rows)
    return root


def test_seed_layout_is_found_and_every_video_scored(seed_layout, tmp_path, capsys):
    code, out, err = run(TINY + ['--data', str(seed_layout), '--out', str(tmp_path / 'run')], capsys)
    assert code == 0, err
    assert f'Kinetics CSV {seed_layout / "annotations" / "kinetics-400_val.csv"}, videos under {seed_layout / "frames"}' in out
    summary = json.load(open(tmp_path / 'run' / 'summary.json'))
    assert summary['counts']['scored'] == 3 and summary['counts']['missing'] == 0


def test_folder_with_no_csv_and_non_class_folders_names_them(seed_layout, tmp_path, capsys):
    os.rename(seed_layout / 'annotations' / 'kinetics-400_val.csv', tmp_path / 'moved.csv')
    try:
        code, _, err = run(TINY + ['--data', str(seed_layout), '--out', str(tmp_path / 'run')], capsys)
    finally:
        os.rename(tmp_path / 'moved.csv', seed_layout / 'annotations' / 'kinetics-400_val.csv')
    assert code == 2
    assert 'annotations/, frames/ are not classes of the model' in err
    assert 'kinetics-400_val.csv' in err          # says which CSV names it tried


def test_empty_folder_exits_2_saying_where_it_looked(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code, out, err = run(TINY + ['--data', str(tmp_path / 'empty'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and 'no video found' in err and str(tmp_path / 'empty') in err
    assert 'model ' not in out                   # before any work


def test_csv_whose_videos_are_all_missing_exits_1_with_outputs_written(tmp_path, capsys):
    write_csv(str(tmp_path / 'data' / 'kinetics-400_val.csv'), [['class1', 'nowhere0000', 1, 11, 'val']])
    code, _, err = run(TINY + ['--data', str(tmp_path / 'data'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 1 and 'none of the 1 listed videos was found' in err
    failures = list(csv.DictReader(open(tmp_path / 'run' / 'failures.csv')))
    assert [f['video_id'] for f in failures] == ['nowhere0000_000001_000011']
    assert 'no video found under' in failures[0]['reason']



def test_a_quiet_run_prints_errors_only(seed_layout, tmp_path, capsys):
    """What fine-tuning's validation each epoch uses: the same run and files, no header or outcome lines."""
    import eval.kit.engine
    from eval.kit.config import RunRequest
    request = dict(model='tiny_video_net', random_weights=True, views='1x2', batch_size=2, workers=0,
                   no_flops=True, quiet=True)
    code = eval.kit.engine.run(RunRequest(data=str(seed_layout), out=str(tmp_path / 'run'), **request))
    captured = capsys.readouterr()
    assert code == 0 and captured.out == '' and captured.err == ''
    assert json.load(open(tmp_path / 'run' / 'summary.json'))['counts']['scored'] == 3
    (tmp_path / 'empty').mkdir()
    code = eval.kit.engine.run(RunRequest(data=str(tmp_path / 'empty'), out=str(tmp_path / 'run2'), **request))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == '' and 'no video found' in captured.err

# ------------------------------------------------------------------------------------ exit status

@pytest.fixture(scope='module')
def broken_set(tmp_path_factory):
    """Three good clips, one truncated mp4 and one missing file, as a ``path label`` list."""
    root = tmp_path_factory.mktemp('broken')
    for i in range(3):
        clip(root / f'good{i}.mp4', seed=i)
    data = open(clip(root / 'cut.mp4', seed=9), 'rb').read()
    (root / 'cut.mp4').write_bytes(data[:len(data) // 3])
    (root / 'list.txt').write_text('good0.mp4 0\ngood1.mp4 1\ngood2.mp4 2\ncut.mp4 3\nabsent.mp4 4\n')
    return root / 'list.txt'


def test_decode_failures_above_max_failed_exit_1_after_writing_outputs(broken_set, tmp_path, capsys):
    code, out, err = run(TINY + ['--data', str(broken_set), '--out', str(tmp_path / 'run')], capsys)
    # 1 of the 4 videos found failed (25%), above the default 1%; the missing one does not count
    assert code == 1 and '1 of 4 videos found failed to decode (25.0%)' in err
    summary = json.load(open(tmp_path / 'run' / 'summary.json'))
    assert summary['counts']['missing'] == 1 and summary['counts']['decode_failed'] == 1
    assert summary['counts']['scored'] == 3 and summary['exit']['status'] == 1
    assert os.path.isfile(tmp_path / 'run' / 'scores.npz')


def test_decode_failures_within_max_failed_exit_0(broken_set, tmp_path, capsys):
    code, _, err = run(TINY + ['--data', str(broken_set), '--out', str(tmp_path / 'run'), '--max-failed', '0.25'],
                       capsys)
    assert code == 0, err
    assert json.load(open(tmp_path / 'run' / 'summary.json'))['exit'] == {'status': 0, 'reason': 'ok',
                                                                          'max_failed': 0.25}


def test_every_video_failing_exits_1(tmp_path, capsys):
    (tmp_path / 'bad.mp4').write_bytes(b'not a video')
    (tmp_path / 'list.txt').write_text('bad.mp4 0\n')
    code, _, err = run(TINY + ['--data', str(tmp_path / 'list.txt'), '--out', str(tmp_path / 'run'),
                               '--max-failed', '1'], capsys)
    assert code == 1 and 'all 1 videos found failed to decode' in err


def test_max_failed_outside_0_1_is_refused(broken_set, tmp_path, capsys):
    code, _, err = run(TINY + ['--data', str(broken_set), '--out', str(tmp_path / 'run'), '--max-failed', '2'], capsys)
    assert code == 2 and '--max-failed is a fraction' in err


def test_clips_too_short_for_the_model_are_refused_before_any_work(broken_set, tmp_path, capsys):
    # i3d_r50's temporal pools need 7 frames (its config's min_input_size); 4 used to crash in max_pool3d
    code, _, err = run(['--model', 'i3d_r50', '--random-weights', '--no-flops', '--no-progress', '--views', '1x1',
                        '--frames', '4', '--data', str(broken_set), '--out', str(tmp_path / 'run')], capsys)
    assert code == 2 and ('--frames 4 / --crop 224: i3d_r50 needs clips of at least 7 frames and 5x5 pixels' in err)
    assert not os.path.exists(tmp_path / 'run' / 'manifest.json')


# ------------------------------------------------------------------------------------ unlabelled folders

def test_unlabelled_folder_gives_predictions_and_no_accuracy(tmp_path, capsys):
    clip(tmp_path / 'videos' / 'first.mp4', seed=1)
    write_frame_folder(str(tmp_path / 'videos' / 'second'), synthetic_frames(10, 48, 64, seed=2))
    code, out, err = run(TINY + ['--data', str(tmp_path / 'videos'), '--out', str(tmp_path / 'run')], capsys)
    assert code == 0, err
    assert 'unlabelled videos in' in out and 'predictions only' in out and 'accuracy over' not in out
    predictions = list(csv.DictReader(open(tmp_path / 'run' / 'predictions.csv')))
    assert [p['video_id'] for p in predictions] == ['first', 'second']
    assert all(p['pred1'].startswith('class') and p['correct_top1'] == '' for p in predictions)
    with np.load(tmp_path / 'run' / 'scores.npz') as scores:
        assert scores['probs'].shape == (2, NUM_CLASSES) and (scores['labels'] == -1).all()
    assert json.load(open(tmp_path / 'run' / 'summary.json'))['metrics']['videos'] == 0


# ------------------------------------------------------------------------------------ UCF-101

@pytest.fixture(scope='module')
def ucf(tmp_path_factory):
    """classInd.txt writes HandStandPushups, the test list HandstandPushups (as the real files do); one listed
    path holds a space; one listed video is missing."""
    root = tmp_path_factory.mktemp('ucf')
    lists = root / 'ucfTrainTestlist'
    lists.mkdir()
    (lists / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 HandStandPushups\n3 YoYo\n')
    (lists / 'testlist01.txt').write_text('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n'
                                          'HandstandPushups/v_HandStandPushups_g01_c01.avi\n'
                                          'YoYo/v_YoYo g01_c02.avi\n'
                                          'YoYo/v_YoYo_g07_c01.avi\n')
    (lists / 'testlist02.txt').write_text('YoYo/v_YoYo_g07_c01.avi\n')
    for relative, seed in (('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi', 0),
                           ('HandstandPushups/v_HandStandPushups_g01_c01.avi', 1), ('YoYo/v_YoYo g01_c02.avi', 2)):
        frames = synthetic_frames(12, 48, 64, seed=seed)
        from eval.data.synthetic import write_video
        write_video(str(root / relative), frames)     # H.264 in an .avi name: PyAV reads by content
    return root


def test_ucf101_classes_come_from_classind_in_its_order(ucf):
    assert ucf101_classes(str(ucf), None) == ('ApplyEyeMakeup', 'HandStandPushups', 'YoYo')


def test_ucf101_split_1_labels_case_insensitively_keeps_spaces_and_counts_the_missing(ucf):
    labels = LabelMap(ucf101_classes(str(ucf), None))
    records, desc = read_ucf101(str(ucf), None, '1', labels)
    assert [(r.video_id, r.label) for r in records] == [
        ('v_ApplyEyeMakeup_g01_c01', 0), ('v_HandStandPushups_g01_c01', 1), ('v_YoYo g01_c02', 2),
        ('v_YoYo_g07_c01', 2)]
    assert records[2].path == str(ucf / 'YoYo' / 'v_YoYo g01_c02.avi')
    assert records[3].path is None and 'YoYo/v_YoYo_g07_c01.avi not found' in records[3].missing
    assert 'UCF-101 split 1' in desc


def test_ucf101_split_outside_1_2_3_is_refused():
    with pytest.raises(ValueError, match='must be one of 1, 2, 3'):
        get_benchmark('ucf101').split('4')


def test_ucf101_through_the_generic_front_end(ucf, tmp_path, capsys):
    code, out, err = run(TINY + ['--benchmark', 'ucf101', '--split', '1', '--data', str(ucf), '--max-failed', '0',
                                 '--out', str(tmp_path / 'run')], capsys, front_end=generic)
    assert code == 0, err
    summary = json.load(open(tmp_path / 'run' / 'summary.json'))
    assert summary['benchmark'] == 'ucf101'
    assert summary['counts']['scored'] == 3 and summary['counts']['missing'] == 1
    with np.load(tmp_path / 'run' / 'scores.npz') as scores:
        assert list(scores['class_names']) == ['ApplyEyeMakeup', 'HandStandPushups', 'YoYo']
        assert scores['probs'].shape == (4, 3)


def test_checkpoint_with_another_class_count_is_refused_and_one_that_fits_is_scored(ucf, tmp_path, capsys):
    import torch
    import zoo
    for classes in (NUM_CLASSES, 3):
        torch.save(zoo.create_model('tiny_video_net', num_classes=classes).state_dict(), tmp_path / f'c{classes}.pth')
    base = ['--benchmark', 'ucf101', '--data', str(ucf), '--model', 'tiny_video_net', '--views', '1x2',
            '--workers', '0', '--no-progress', '--no-flops', '--max-failed', '0']
    code, _, err = run(base + ['--checkpoint', str(tmp_path / f'c{NUM_CLASSES}.pth'), '--out', str(tmp_path / 'a')],
                       capsys, front_end=generic)
    assert code == 2 and f'tiny_video_net scores {NUM_CLASSES} classes, but ucf101 has 3' in err
    code, _, err = run(base + ['--checkpoint', str(tmp_path / 'c3.pth'), '--out', str(tmp_path / 'b')],
                       capsys, front_end=generic)
    assert code == 0, err


# ------------------------------------------------------------------------------------ HMDB-51

@pytest.fixture(scope='module')
def hmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp('hmdb')
    splits = root / 'testTrainMulti_7030_splits'
    splits.mkdir()
    (splits / 'brush_hair_test_split1.txt').write_text('Brushing_my_hair_brush_hair_u_nm_np2_ba_goo_0.avi 2 \n'
                                                       'train_video_brush_hair.avi 1 \nunused.avi 0 \n')
    (splits / 'cartwheel_test_split1.txt').write_text('(Rad)Schlag_cartwheel_f_cm_np1_le_med_6.avi 2 \n'
                                                      'gone_cartwheel.avi 2 \n')
    clip(root / 'brush_hair' / 'Brushing_my_hair_brush_hair_u_nm_np2_ba_goo_0.avi', seed=3)
    write_frame_folder(str(root / 'cartwheel' / '(Rad)Schlag_cartwheel_f_cm_np1_le_med_6'),
                       synthetic_frames(10, 48, 64, seed=4))
    return root


def test_hmdb51_test_set_is_flag_2_of_each_class_file(hmdb):
    classes = hmdb51_classes(str(hmdb), None)
    assert classes == ('brush_hair', 'cartwheel')
    records, _ = read_hmdb51(str(hmdb), None, '1', LabelMap(classes))
    assert [(r.video_id, r.label, r.path is not None) for r in records] == [
        ('Brushing_my_hair_brush_hair_u_nm_np2_ba_goo_0', 0, True),
        ('(Rad)Schlag_cartwheel_f_cm_np1_le_med_6', 1, True),     # found as a frame folder
        ('gone_cartwheel', 1, False)]


def test_hmdb51_missing_split_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataNotFound, match='_test_split1.txt found; looked in'):
        hmdb51_classes(str(tmp_path), None)


def test_hmdb51_scored_through_the_generic_front_end(hmdb, tmp_path, capsys):
    code, _, err = run(TINY + ['--benchmark', 'hmdb51', '--data', str(hmdb), '--out', str(tmp_path / 'run')],
                       capsys, front_end=generic)
    assert code == 0, err
    counts = json.load(open(tmp_path / 'run' / 'summary.json'))['counts']
    assert (counts['scored'], counts['missing'], counts['decode_failed']) == (2, 1, 0)


def test_auto_reading_a_list_file_still_works(broken_set):
    records, desc = read_dataset(str(broken_set), LabelMap([f'class{i}' for i in range(NUM_CLASSES)]))
    assert desc.startswith('list file') and len(records) == 5
