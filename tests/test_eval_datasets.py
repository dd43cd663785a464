"""Kinetics CSVs, list files and layouts; missing or unreadable videos are listed and counted, not fatal."""
import csv
import json
import os

import numpy as np
import pytest

import zoo
from eval import kinetics
from eval.data.records import LabelMap, VideoIndex, read_dataset, read_kinetics_csv, read_list_file
from eval.data.synthetic import synthetic_frames, write_frame_folder, write_video

LABELS = LabelMap(zoo.kinetics400_class_names())
HEADER = ['label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc']


@pytest.fixture(scope='module')
def kinetics_root(tmp_path_factory):
    """A miniature Kinetics copy holding every layout and every kind of failure, one row each."""
    root = tmp_path_factory.mktemp('kinetics')
    frames = synthetic_frames(24, 72, 96, seed=1)
    # good: the seed layout <label>/<youtube_id>_<start>_<end>/
    write_frame_folder(str(root / 'abseiling' / 'goodseed__1_000010_000020'), frames)
    # good: the flat layout <youtube_id>_<start>_<end>/
    write_frame_folder(str(root / 'goodflat__2_000001_000011'), frames)
    # good: a video file named by youtube id
    write_video(str(root / 'goodwebm__3.webm'), frames[:16])
    # corrupt JPEG: frame 5 of 24 holds garbage
    bad = write_frame_folder(str(root / 'archery' / 'corruptjpeg_000000_000010'), frames)
    with open(os.path.join(bad, 'image_00005.jpg'), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 this is not a jpeg ' * 8)
    # empty frame folder
    os.makedirs(root / 'archery' / 'emptyfolder_000000_000010')
    # truncated mp4: the first third of a real encode (the index at the end is lost)
    full = str(root / 'truncatedmp_000000_000010.mp4')
    write_video(full, frames)
    data = open(full, 'rb').read()
    with open(full, 'wb') as f:
        f.write(data[:len(data) // 3])
    rows = [
        ['abseiling', 'goodseed__1', 10, 20, 'val', 0],
        ['air drumming', 'goodflat__2', 1, 11, 'val', 0],
        ['riding a bike', 'goodwebm__3', 30, 40, 'val', 0],
        ['archery', 'corruptjpeg', 0, 10, 'val', 0],
        ['archery', 'emptyfolder', 0, 10, 'val', 0],
        ['bowling', 'truncatedmp', 0, 10, 'val', 0],
        ['bowling', 'notthere123', 0, 10, 'val', 0],
    ]
    with open(root / 'kinetics_val.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return root


@pytest.fixture(scope='module')
def cli_run(kinetics_root, tmp_path_factory):
    """The CLI on the miniature copy: a small 8x8 model, 3x2 views of 4 frames, 64-pixel crops."""
    out = tmp_path_factory.mktemp('run')
    argv = ['--model', 'i3d_r50_8x8', '--random-weights', '--data', str(kinetics_root), '--views', '3x2',
            '--frames', '4', '--scale', '64', '--crop', '64', '--workers', '0', '--batch-size', '4',
            '--no-flops', '--no-progress', '--out', str(out)]
    # half of the found videos are broken on purpose (corrupt JPEG, empty folder, truncated mp4): far above
    # the default --max-failed, so the run exits 1, yet every output is written
    assert kinetics.main(argv) == 1
    summary = json.load(open(out / 'summary.json'))
    assert summary['exit']['status'] == 1 and 'failed to decode' in summary['exit']['reason']
    with open(out / 'failures.csv', newline='') as f:
        failures = {row['video_id']: row['reason'] for row in csv.DictReader(f)}
    return out, summary, failures


def test_csv_rows_find_seed_layout_flat_layout_and_video_files(kinetics_root):
    records = {r.video_id: r for r in read_kinetics_csv(str(kinetics_root / 'kinetics_val.csv'),
                                                        str(kinetics_root), LABELS)}
    assert records['goodseed__1_000010_000020'].path.endswith(os.path.join('abseiling', 'goodseed__1_000010_000020'))
    assert records['goodflat__2_000001_000011'].path.endswith('goodflat__2_000001_000011')
    assert records['goodwebm__3_000030_000040'].path.endswith('goodwebm__3.webm')
    assert records['goodseed__1_000010_000020'].label == LABELS.names.index('abseiling')


def test_data_folder_holding_a_kinetics_csv_is_read_as_that_csv(kinetics_root):
    records, description = read_dataset(str(kinetics_root), LABELS)
    assert len(records) == 7 and 'kinetics_val.csv' in description


def test_csv_row_without_video_keeps_a_reason_instead_of_a_path(kinetics_root):
    records = {r.video_id: r for r in read_kinetics_csv(str(kinetics_root / 'kinetics_val.csv'),
                                                        str(kinetics_root), LABELS)}
    missing = records['notthere123_000000_000010']
    assert missing.path is None and 'no video found' in missing.missing


def test_index_does_not_descend_into_frame_folders(kinetics_root):
    index = VideoIndex(str(kinetics_root))
    assert all(not p.endswith('.jpg') for paths in index.by_id.values() for p in paths)


def test_corrupt_jpeg_is_reported_and_skipped(cli_run):
    _, _, failures = cli_run
    assert 'image_00005.jpg' in failures['corruptjpeg_000000_000010']


def test_empty_frame_folder_is_reported_and_skipped(cli_run):
    _, _, failures = cli_run
    assert 'empty frame folder' in failures['emptyfolder_000000_000010']


def test_truncated_mp4_is_reported_and_skipped(cli_run):
    _, _, failures = cli_run
    assert 'cannot open video' in failures['truncatedmp_000000_000010']


def test_csv_row_with_no_video_is_reported_and_skipped(cli_run):
    _, _, failures = cli_run
    assert 'no video found' in failures['notthere123_000000_000010']


def test_summary_counts_scored_out_of_annotated(cli_run):
    _, summary, failures = cli_run
    assert summary['counts']['annotated'] == 7
    assert summary['counts']['scored'] == 3
    assert summary['counts']['failed'] == 4 == len(failures)
    assert summary['metrics']['videos'] == 3
    assert summary['metrics_over_annotated']['videos'] == 7   # Caffe2 accounting: failures count as wrong
    assert summary['weights']['kind'] == 'random' and 'means nothing' in summary['weights']['note']


def test_scores_file_holds_every_annotated_video_with_a_scored_mask(cli_run):
    out, _, _ = cli_run
    data = np.load(out / 'scores.npz')
    assert len(data['video_ids']) == 7 and data['scored'].sum() == 3
    np.testing.assert_allclose(data['probs'][data['scored']].sum(axis=1), 1.0, rtol=1e-5)
    assert data['probs'].shape == data['outputs'].shape == (7, 400)


def test_list_file_reads_relative_paths_integer_labels_and_class_names(tmp_path):
    (tmp_path / 'a.mp4').write_bytes(b'x')
    (tmp_path / 'b c.mp4').write_bytes(b'x')
    (tmp_path / 'list.txt').write_text('a.mp4 5\nb c.mp4 riding a bike\n# comment\na.mp4\n')
    records = read_list_file(str(tmp_path / 'list.txt'), LABELS)
    assert [(r.video_id, r.label) for r in records] == [
        ('a', 5), ('b c', LABELS.names.index('riding a bike')), ('a', -1)]
    assert records[1].path == str(tmp_path / 'b c.mp4')


def test_label_spellings_of_different_kinetics_files_map_to_one_class():
    index = LABELS.names.index('riding a bike')
    assert LABELS.lookup('riding_a_bike')[0] == LABELS.lookup('"Riding a bike"')[0] == index
    with pytest.raises(KeyError):
        LABELS.lookup('juggling chainsaws on a unicycle')


def test_unlabelled_folder_read_recursively_names_videos_by_relative_path(tmp_path):
    from eval.data.records import read_unlabelled_folder
    frames = synthetic_frames(4, 24, 32, seed=3)
    write_video(str(tmp_path / 'Abuse' / 'Abuse001_x264.mp4'), frames)
    write_video(str(tmp_path / 'Abuse' / 'deeper' / 'Abuse002_x264.mp4'), frames)
    write_frame_folder(str(tmp_path / 'Normal' / 'Normal_001'), frames)     # a frame folder is one video
    write_video(str(tmp_path / 'top.mp4'), frames)
    (tmp_path / 'notes.txt').write_text('not a video')
    (tmp_path / 'empty').mkdir()
    records = read_unlabelled_folder(str(tmp_path), recursive=True)
    assert [r.video_id for r in records] == ['Abuse/Abuse001_x264', 'Abuse/deeper/Abuse002_x264',
                                             'Normal/Normal_001', 'top']
    assert records[2].path == str(tmp_path / 'Normal' / 'Normal_001') and all(r.label == -1 for r in records)
    assert [r.video_id for r in read_unlabelled_folder(str(tmp_path))] == ['top']       # flat: only the top level
