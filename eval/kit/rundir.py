"""A job's run folder: writable before any work, enough free space, and tied to one configuration (the
manifest written by the first run, compared by every later one, for scoring, features and fine-tuning)."""
from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Dict, List, Optional

from converters.file_io import atomic_write

MANIFEST = 'manifest.json'


def probe_writable(out_dir: str) -> Optional[str]:
    """None when a file can be created, written, fsynced and removed in ``out_dir`` (created if needed)."""
    probe = os.path.join(out_dir, f'.write-probe-{socket.gethostname()}-{os.getpid()}')
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(probe, 'wb') as f:
            f.write(b'probe')
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        return f'cannot write to --out {out_dir}: {e.strerror or e} ({type(e).__name__})'
    return None


def estimated_output_bytes(num_videos: int, num_classes: int) -> int:
    """A generous guess: the store record (two float64 sums), scores.npz (two float32 rows), a CSV line."""
    per_video = 16 * num_classes + 8 * num_classes + 600
    return int(1.5 * num_videos * per_video) + (1 << 20)


def check_free_space(out_dir: str, num_videos: int, num_classes: int) -> Optional[str]:
    need = estimated_output_bytes(num_videos, num_classes)
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError as e:
        return f'cannot check free space of --out {out_dir}: {e}'
    if free < need:
        return (f'--out {out_dir} has {free / 2**20:.1f} MiB free, but the scores of {num_videos} videos need '
                f'about {need / 2**20:.1f} MiB; free some space or choose another --out')
    return None


def read_manifest(run_dir: str) -> Optional[dict]:
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _flatten(value, prefix: str = '') -> Dict[str, object]:
    if isinstance(value, dict):
        flat: Dict[str, object] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return flat
    return {prefix: value}


def manifest_differences(stored: dict, current: dict) -> List[str]:
    """'field: stored X, now Y' for every identity field that differs (the 'identity' sections compared)."""
    a, b = _flatten(stored.get('identity', {})), _flatten(current.get('identity', {}))
    return [f'{k}: this folder has {a.get(k)!r}, this run has {b.get(k)!r}'
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def claim_run_dir(run_dir: str, manifest: dict, file_name: str = MANIFEST, what: str = 'a run') -> Optional[str]:
    """One configuration per folder, for every job that writes one (scores, features, fine-tuning): the first
    call records ``manifest`` in ``run_dir/file_name``; a later call gets None when its 'identity' section is
    the stored one, else why the folder must not be reused (each differing field, stored and now)."""
    path = os.path.join(run_dir, file_name)
    if not os.path.isfile(path):
        os.makedirs(run_dir, exist_ok=True)
        with atomic_write(path, 'w', encoding='utf-8') as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write('\n')
        return None
    with open(path, encoding='utf-8') as f:
        stored = json.load(f)
    differences = manifest_differences(stored, json.loads(json.dumps(manifest)))   # tuples compare as lists
    if not differences:
        return None
    return (f'{run_dir} holds {what} of a different configuration ({file_name}); refusing to mix results:\n  '
            + '\n  '.join(differences)
            + f'\nUse another --out for this configuration, or delete {run_dir} to start it fresh.')
