"""Re-scoring or ensembling saved runs: ``python -m eval.report runs/a/scores.npz [runs/b/scores.npz ...]
[--aggregate logits]`` reads the scores.npz files of finished runs and reports the metrics of their mean
scores over the videos every run scored."""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

import numpy as np

from eval.kit.meter import AGGREGATIONS, classification_metrics


def load_scores(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def ensemble(runs: Sequence[dict], aggregation: str = 'softmax') -> dict:
    """Average per-video scores of several runs over the videos every run scored, aligned by video id.

    'softmax' averages the runs' mean probabilities; 'logits' averages their mean raw outputs.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f'aggregation must be one of {AGGREGATIONS}')
    key = 'probs' if aggregation == 'softmax' else 'outputs'
    common = None
    for run in runs:
        ids = {str(v) for v, s in zip(run['video_ids'], run['scored']) if s}
        common = ids if common is None else common & ids
    video_ids = sorted(common or ())
    scores, labels = [], None
    for run in runs:
        position = {str(v): i for i, v in enumerate(run['video_ids'])}
        rows = [position[v] for v in video_ids]
        scores.append(run[key][rows].astype(np.float64))
        if labels is None:
            labels = run['labels'][rows]
    if not video_ids:
        return {'video_ids': [], 'labels': np.zeros(0, np.int64), 'scores': np.zeros((0, 0))}
    return {'video_ids': video_ids, 'labels': labels, 'scores': np.mean(scores, axis=0)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('scores', nargs='+', help='scores.npz files of eval.kinetics runs')
    parser.add_argument('--aggregate', choices=AGGREGATIONS, default='softmax',
                        help='score rule: mean view softmax (Caffe2) or mean raw output')
    args = parser.parse_args(argv)
    runs = [load_scores(p) for p in args.scores]
    merged = ensemble(runs, args.aggregate)
    m = classification_metrics(merged['scores'], merged['labels']) if len(merged['video_ids']) else {}
    print(f'{len(args.scores)} run(s), {len(merged["video_ids"])} videos scored by all, rule: {args.aggregate}')
    for name in ('top1', 'top5', 'mean_class_accuracy'):
        if name in m:
            print(f'{name:>20}: {100 * m[name]:.2f}%')
    return 0
