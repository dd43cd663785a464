"""Writing a test's results to disk, and re-scoring or ensembling saved results later.

A run directory holds:
  scores.npz       video_ids, labels, scored mask, probs (mean view softmax), outputs (mean raw view output),
                   class_names: enough to re-score with either rule or ensemble with other runs
  predictions.csv  per scored video: label and the top-5 classes with scores
  failures.csv     every video that was not scored, with the reason
  summary.json     model, weights, views, counts (scored / annotated / failed), metrics, FLOPs, timing

    python -m eval.report runs/a/scores.npz [runs/b/scores.npz ...] [--aggregate logits]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from converters.file_io import atomic_write

from eval.kit.meter import AGGREGATIONS, classification_metrics, label_ranks


def write_scores(path: str, result, class_names: Sequence[str]) -> None:
    meter = result.meter
    with atomic_write(path) as f:
        np.savez_compressed(
            f,
            video_ids=np.array([r.video_id for r in result.records]),
            labels=np.array([r.label for r in result.records], dtype=np.int64),
            scored=meter.complete,
            probs=meter.video_scores('softmax').astype(np.float32),
            outputs=meter.video_scores('logits').astype(np.float32),
            class_names=np.array(list(class_names)),
            aggregation=np.array(meter.aggregation),
            views=np.array(result.spec.name),
        )


def top_classes(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """(N, k) class indices, best first."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind='stable')[:, :k]


def write_predictions(path: str, result, class_names: Sequence[str], k: int = 5) -> None:
    scores = result.meter.video_scores()
    scored = result.meter.complete
    best = top_classes(scores, k)
    with atomic_write(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        header = ['video_id', 'label', 'label_name', 'correct_top1', 'correct_top5']
        for i in range(1, best.shape[1] + 1):
            header += [f'pred{i}', f'score{i}']
        writer.writerow(header)
        for i, record in enumerate(result.records):
            if not scored[i]:
                continue
            rank = label_ranks(scores[[i]], np.array([record.label]))[0] if record.label >= 0 else None
            row = [record.video_id, record.label, record.label_name,
                   '' if rank is None else int(rank == 0), '' if rank is None else int(rank < 5)]
            for c in best[i]:
                row += [class_names[c] if c < len(class_names) else str(c), f'{scores[i, c]:.6f}']
            writer.writerow(row)


def write_failures(path: str, result) -> None:
    with atomic_write(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['video_id', 'path', 'label_name', 'reason'])
        for failure in result.failures:
            writer.writerow([failure.record.video_id, failure.record.path or '', failure.record.label_name,
                             failure.reason])


def metrics_over_annotated(result) -> Dict[str, float]:
    """Caffe2's accounting: tools/test_net_video.py divides by the dataset size, so an unscored video is wrong."""
    labels = np.array([r.label for r in result.records], dtype=np.int64)
    scored = result.meter.complete
    labelled = labels >= 0
    if not labelled.any():
        return {'top1': float('nan'), 'top5': float('nan'), 'videos': 0}
    scores = result.meter.video_scores()
    ranks = np.full(len(labels), np.iinfo(np.int64).max)
    ok = labelled & scored
    if ok.any():
        ranks[ok] = label_ranks(scores[ok], labels[ok])
    return {'top1': float((ranks[labelled] < 1).mean()), 'top5': float((ranks[labelled] < 5).mean()),
            'videos': int(labelled.sum())}


def write_run(out_dir: str, result, class_names: Sequence[str], summary: dict) -> Dict[str, str]:
    """All four files, each written atomically, summary.json last (a resumed run reads it as the mark of a
    finished run); returns their paths. ``summary`` is written as given plus counts and metrics."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in
             ('scores.npz', 'predictions.csv', 'failures.csv', 'summary.json')}
    write_scores(paths['scores.npz'], result, class_names)
    write_predictions(paths['predictions.csv'], result, class_names)
    write_failures(paths['failures.csv'], result)
    with atomic_write(paths['summary.json'], 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2, default=_json_default)
        f.write('\n')
    return paths


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def json_safe(value):
    """NaN -> None so summary.json stays valid JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------ re-scoring saved runs

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


if __name__ == '__main__':
    sys.exit(main())
