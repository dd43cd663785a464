"""What makes a fine-tuning run durable: the training checkpoint (model, optimizer, scheduler, scaler, every
rank's RNG states, the data position), the recipe a resume must match, and the metrics log.

Files are written by rank 0 through converters.file_io.atomic_write, so a kill -9 leaves the previous
checkpoint or the new one, never a part. The log is append-only; a resume cuts it back to the checkpoint.
"""
from __future__ import annotations

import csv
import os
import random
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from converters.file_io import atomic_write

from eval.kit.rundir import claim_run_dir

CHECKPOINT = 'checkpoint.pt'
RECIPE = 'recipe.json'
METRICS = 'metrics.csv'
LAST, BEST = 'last.pth', 'best.pth'


# ------------------------------------------------------------------------------------------- RNG

def capture_rng() -> dict:
    """This process's generator states: torch (CPU and every CUDA device), numpy's global, Python's."""
    np_state = np.random.get_state(legacy=False)
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': {'bit_generator': np_state['bit_generator'], 'key': np_state['state']['key'].tolist(),
                      'pos': int(np_state['state']['pos']), 'has_gauss': int(np_state['has_gauss']),
                      'gauss': float(np_state['gauss'])},
            'python': random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state({'bit_generator': n['bit_generator'], 'has_gauss': n['has_gauss'], 'gauss': n['gauss'],
                         'state': {'key': np.asarray(n['key'], dtype=np.uint32), 'pos': n['pos']}})
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------- position

@dataclass
class Position:
    """Where training stands: the next optimizer step is ``step`` of epoch ``epoch`` (0-based);
    ``epochs_finished`` epochs have had their end (last.pth, validation, best.pth) done; the running sums
    of the current epoch's training loss and correct clips; the best validation so far."""
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    epochs_finished: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    clips: int = 0
    epoch_loss: Optional[float] = None        # the last finished epoch's mean training loss and top-1
    epoch_top1: Optional[float] = None
    best_top1: Optional[float] = None
    best_epoch: Optional[int] = None

    @property
    def end_of_epoch_pending(self) -> bool:
        return self.step == 0 and self.epoch > self.epochs_finished


def save_training_state(path: str, *, model: torch.nn.Module, optimizer, scheduler, scaler, rng: List[dict],
                        position: Position, recipe: dict) -> None:
    """One file with everything a resume needs; ``rng`` holds every rank's states, in rank order."""
    state = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
             'scaler': scaler.state_dict(), 'rng': rng, 'position': asdict(position), 'recipe': recipe,
             'torch': str(torch.__version__)}
    with atomic_write(path) as f:
        torch.save(state, f)


def load_training_state(path: str) -> dict:
    """The checkpoint as saved (CPU tensors); weights_only, so a file from elsewhere cannot run code."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise RuntimeError(f'{path}: cannot read the training checkpoint ({e}); move it away to start over') from e


# ------------------------------------------------------------------------------------------- recipe

def check_recipe(out_dir: str, recipe: Dict[str, Any]) -> Optional[str]:
    """None when ``out_dir`` is new (the recipe is recorded in recipe.json) or holds a run of the same recipe;
    else why not (the engine's one-configuration-per-folder rule)."""
    return claim_run_dir(out_dir, {'identity': recipe}, RECIPE, what='a fine-tuning run')


# ------------------------------------------------------------------------------------------- metrics

METRIC_FIELDS = ('kind', 'epoch', 'step', 'global_step', 'lr', 'loss', 'top1', 'clips_per_s', 'val_top1', 'val_top5',
                 'seconds')


class MetricsLog:
    """Rows of ``metrics.csv`` (kind 'step' per optimizer step, 'epoch' per epoch end), and the same scalars
    in TensorBoard when it is installed. Only rank 0 writes."""

    def __init__(self, out_dir: str, enabled: bool):
        self.path = os.path.join(out_dir, METRICS)
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:       # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tensorboard = SummaryWriter(os.path.join(out_dir, 'tensorboard'))

    def cut_back(self, global_step: int, epochs_finished: int) -> None:
        """Drop rows written after the checkpoint a resume starts from (they will be written again)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if (r['kind'] == 'step' and int(r['global_step']) <= global_step)
                or (r['kind'] == 'epoch' and int(r['epoch']) <= epochs_finished)]
        with atomic_write(self.path, 'w', encoding='utf-8') as f:
            writer = csv.DictWriter(f, METRIC_FIELDS, lineterminator='\n')
            writer.writeheader()
            writer.writerows(keep)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        new = not os.path.isfile(self.path)
        with open(self.path, 'a', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, METRIC_FIELDS, lineterminator='\n')
            if new:
                writer.writeheader()
            writer.writerow({k: _format(row.get(k)) for k in METRIC_FIELDS})
        if self.tensorboard is not None:
            x = row['global_step']
            for key in ('lr', 'loss', 'top1', 'clips_per_s', 'val_top1', 'val_top5'):
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(f'{row["kind"]}/{key}', row[key], x)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _format(value) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)
