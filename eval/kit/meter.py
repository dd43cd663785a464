"""Folding view scores into per-video scores, and the accuracy metrics of a test (PySlowFast TestMeter's job).

Per video the meter keeps two running sums over its views: softmax probabilities (the Caffe2 rule:
tools/test_net_video.py sums the 30 softmax outputs per video) and raw outputs (logit averaging). Both
are saved, so a finished run can be re-scored either way or ensembled with another run.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

AGGREGATIONS = ('softmax', 'logits')


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _labelled(scores: np.ndarray, labels: np.ndarray):
    scores, labels = np.asarray(scores), np.asarray(labels)
    keep = labels >= 0
    return scores[keep], labels[keep]


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How many classes score strictly higher than the true one (0: top-1). Ties count in the label's favour."""
    true = scores[np.arange(len(labels)), labels]
    return (scores > true[:, None]).sum(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of labelled videos whose label is among the k best-scoring classes (unlabelled: -1, ignored)."""
    scores, labels = _labelled(scores, labels)
    if len(labels) == 0:
        return float('nan')
    return float((label_ranks(scores, labels) < k).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of each class that has labelled videos, averaged over those classes."""
    scores, labels = _labelled(scores, labels)
    if len(labels) == 0:
        return float('nan')
    correct = label_ranks(scores, labels) == 0
    return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """top-1, top-5 and mean class accuracy (fractions) over the labelled videos, and how many were used."""
    labels = np.asarray(labels)
    k5 = min(5, np.asarray(scores).shape[1]) if np.asarray(scores).ndim == 2 else 5
    return {
        'top1': topk_accuracy(scores, labels, 1),
        'top5': topk_accuracy(scores, labels, k5),
        'mean_class_accuracy': mean_class_accuracy(scores, labels),
        'videos': int((labels >= 0).sum()),
    }


class MultiViewMeter:
    """Accumulates the views of each video; a video is scored once all ``num_views`` views are in."""

    def __init__(self, num_videos: int, num_views: int, num_classes: int, aggregation: str = 'softmax'):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f'aggregation must be one of {AGGREGATIONS}, got {aggregation!r}')
        self.num_views = num_views
        self.aggregation = aggregation
        self.prob_sum = np.zeros((num_videos, num_classes), dtype=np.float64)
        self.output_sum = np.zeros((num_videos, num_classes), dtype=np.float64)
        self.view_count = np.zeros(num_videos, dtype=np.int64)
        self.labels = np.full(num_videos, -1, dtype=np.int64)
        self._correct = 0     # running top-1 over completed labelled videos
        self._counted = 0

    def set_label(self, video: int, label: int) -> None:
        self.labels[video] = label

    def add(self, videos: Sequence[int], outputs: np.ndarray) -> None:
        """One row of ``outputs`` (model output of one view) per entry of ``videos``."""
        outputs = np.asarray(outputs, dtype=np.float64)
        videos = np.asarray(videos, dtype=np.int64)
        np.add.at(self.prob_sum, videos, softmax(outputs))
        np.add.at(self.output_sum, videos, outputs)
        np.add.at(self.view_count, videos, 1)
        for v in np.unique(videos):
            if self.view_count[v] > self.num_views:
                raise RuntimeError(f'video {v} got {self.view_count[v]} views, expected {self.num_views}')
            if self.view_count[v] == self.num_views and self.labels[v] >= 0:
                self._counted += 1
                scores = self.video_scores(rows=[v])
                self._correct += int(label_ranks(scores, self.labels[[v]])[0] == 0)

    def restore(self, video: int, prob_sum: np.ndarray, output_sum: np.ndarray, view_count: int) -> None:
        """Put back a video's view sums as stored by an earlier run (eval.kit.store), bit for bit."""
        self.prob_sum[video] = prob_sum
        self.output_sum[video] = output_sum
        self.view_count[video] = view_count
        if view_count == self.num_views and self.labels[video] >= 0:
            self._counted += 1
            self._correct += int(label_ranks(self.video_scores(rows=[video]), self.labels[[video]])[0] == 0)

    @property
    def complete(self) -> np.ndarray:
        return self.view_count == self.num_views

    def running_top1(self) -> Optional[float]:
        return self._correct / self._counted if self._counted else None

    def video_scores(self, aggregation: Optional[str] = None, rows=None) -> np.ndarray:
        """Per-video scores: mean softmax probability (default) or mean raw output over the views."""
        aggregation = aggregation or self.aggregation
        rows = slice(None) if rows is None else rows
        total = self.prob_sum if aggregation == 'softmax' else self.output_sum
        count = np.maximum(self.view_count[rows], 1)[:, None]
        return total[rows] / count

    def metrics(self) -> Dict[str, float]:
        done = self.complete
        return classification_metrics(self.video_scores()[done], self.labels[done])
