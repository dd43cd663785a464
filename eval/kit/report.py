"""Writing a test's results to disk (re-scoring or ensembling them later: eval.score.rescore).

A run directory holds:
  scores.npz       video_ids, labels, scored mask, probs (mean view softmax), outputs (mean raw view output),
                   class_names: enough to re-score with either rule or ensemble with other runs
  predictions.csv  per scored video: label and the top-5 classes with scores
  failures.csv     every video that was not scored, with the reason
  summary.json     model, weights, views, counts (scored / annotated / failed), metrics, FLOPs, timing
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, Sequence

import numpy as np

from converters.file_io import atomic_write

from eval.kit.meter import label_ranks


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





