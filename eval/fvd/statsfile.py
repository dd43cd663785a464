"""Statistics files: one set's (mu, sigma, N) with the protocol and the network they were made with.

A real set's statistics are computed once and reused across many evaluations (pytorch-fid's --save-stats
habit), so a file must say what it holds: ``.npz`` with ``mu`` (D,) and ``sigma`` (D, D) float64, ``n``, and
``meta``: JSON of the protocol's identity and the network's (model, state-dict sha256, precision). Loading
one for a run of another protocol or network is an error that lists every difference. Written atomically.
"""
from __future__ import annotations

import io
import json
from typing import Optional, Tuple

import numpy as np

from converters.file_io import atomic_write

from eval.fvd.frechet import Stats
from eval.fvd.protocols import Protocol, protocol_differences

STATS_FORMAT = 'video-zoo-fvd-stats-1'


class StatsMismatch(ValueError):
    """A statistics file made under another protocol or network than the run's."""


def save_stats(path: str, stats: Stats, protocol: Protocol, network: dict, extra: Optional[dict] = None) -> None:
    """Write ``stats`` and what made them to ``path`` (.npz), atomically."""
    meta = {'format': STATS_FORMAT, 'protocol_name': protocol.name, 'protocol': protocol.identity(),
            'description': protocol.describe(), 'network': network, 'n': stats.n, **(extra or {})}
    buffer = io.BytesIO()
    np.savez(buffer, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
             meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def read_stats(path: str) -> Tuple[Stats, dict]:
    """(statistics, meta) of a statistics file; ValueError naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data['meta']).decode())
            mu, sigma, n = data['mu'], data['sigma'], int(data['n'])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f'{path}: not an FVD statistics file of this tool ({type(e).__name__}: {e})') from e
    if meta.get('format') != STATS_FORMAT:
        raise ValueError(f'{path}: format {meta.get("format")!r}, expected {STATS_FORMAT!r}')
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f'{path}: mu {mu.shape} and sigma {sigma.shape} do not match')
    return Stats(mu.astype(np.float64), sigma.astype(np.float64), n, meta['protocol']['covariance']), meta


NETWORK_KEYS = ('model', 'state_dict_sha256', 'precision')


def load_stats(path: str, protocol: Protocol, network: dict) -> Stats:
    """The statistics of ``path`` if they were made under ``protocol`` and ``network``; StatsMismatch lists
    every difference otherwise."""
    stats, meta = read_stats(path)
    problems = protocol_differences(meta['protocol'], protocol.identity())
    stored = meta.get('network', {})
    problems += [f'network {k}: {stored.get(k)!r} (file) vs {network.get(k)!r} (this run)'
                 for k in NETWORK_KEYS if stored.get(k) != network.get(k)]
    if problems:
        raise StatsMismatch(f'{path} was made under another protocol or network ({meta.get("protocol_name")} vs '
                            f'{protocol.name}); the statistics are not comparable:\n  ' + '\n  '.join(problems))
    return stats
