"""The files of a feature run: per video the array and its sidecar JSON, the run's manifest and index.

Every file is written atomically (temporary file, fsync, rename), so a kill leaves either the old state or
the new one. A video is finished when its array and sidecar exist, the sidecar's identity (model, weights,
settings) is this run's and its recorded sha256 is the array file's: only then is it skipped on resume.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from typing import List, Optional

import numpy as np

from converters.file_io import atomic_path, atomic_write, sha256_file

from eval.features.presets import FeatureSettings
from eval.kit.rundir import MANIFEST  # noqa: F401  (the run's manifest: the kit's rule, re-exported for features)
from eval.features.stream import VideoFeatures
from eval.data.snippets import snippet_seconds

FORMAT_VERSION = 1
INDEX = 'index.json'
FAILED = 'failed'            # <out>/failed/<stem>.json: a video that could not be extracted, and why
ARRAY_FORMATS = ('npy', 'npz')
HDF5 = 'features.h5'          # --hdf5: the whole run in one file, assembled from the per-video files


def to_json(value, indent: int = 0) -> str:
    """JSON with one key per line and lists of plain values on one line (per-snippet columns stay short)."""
    pad, inner = ' ' * indent, ' ' * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f'{inner}{json.dumps(str(k))}: {to_json(v, indent + 1)}' for k, v in value.items()]
        return '{\n' + ',\n'.join(items) + '\n' + pad + '}'
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list, tuple)) for v in value):
        return '[\n' + ',\n'.join(inner + to_json(v, indent + 1) for v in value) + '\n' + pad + ']'
    return json.dumps(value, allow_nan=False)


def write_json(path: str, value) -> None:
    with atomic_write(path, 'w', encoding='utf-8') as f:
        f.write(to_json(value) + '\n')


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_bytes(array: np.ndarray, fmt: str) -> bytes:
    """The file content of ``array``: .npy, or .npz holding it as 'features' (uncompressed). Both are
    deterministic (no timestamps), so the same features give the same bytes."""
    buffer = io.BytesIO()
    if fmt == 'npy':
        np.save(buffer, array, allow_pickle=False)
    else:
        np.savez(buffer, features=array)
    return buffer.getvalue()


def identity_sha256(identity: dict) -> str:
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode('utf-8'))


def _round(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(x, 6)


def layout_words(settings: FeatureSettings) -> str:
    axes = ['snippets'] + (['crops'] if settings.crops > 1 else []) + ['channels']
    if settings.layout == 'channels-first':
        axes = axes[-1:] + axes[:-1]
    return '(' + ', '.join(axes) + ')'


def arrange(features: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """(K, C, D) features -> the stored layout: the crop axis only when there are several crops, channels
    last (snippets-first) or first (channels-first, e.g. MS-TCN's (D, N))."""
    out = features if settings.crops > 1 else features[:, 0]
    if settings.layout == 'channels-first':
        out = np.moveaxis(out, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)


def build_sidecar(video: VideoFeatures, array: np.ndarray, array_name: str, array_sha256: str,
                  settings: FeatureSettings, run_identity: dict, model_info: dict) -> dict:
    meta, plan = video.meta, video.meta.plan
    spans = [plan.span(k) for k in range(plan.num_snippets)]
    times = [snippet_seconds(a, b, meta.fps) for a, b in spans]
    snippets = {
        'count': plan.num_snippets,
        'rule': describe_rule(settings, meta.num_frames, plan.num_snippets),
        'first_frame': [a for a, _ in spans],
        'last_frame': [b for _, b in spans],
        'start_seconds': [_round(t0) for t0, _ in times],
        'end_seconds': [_round(t1) for _, t1 in times],
        'padded_frames': [plan.padded(k) for k in range(plan.num_snippets)],
    }
    if settings.align == 'centre':
        snippets['centre_frame'] = [int(c) for c in plan.centres]
    return {
        'format_version': FORMAT_VERSION,
        'video': {'id': video.job.video_id, 'path': os.path.abspath(video.job.path), 'frames': meta.num_frames,
                  'fps': meta.fps, 'source_fps': meta.source_fps,
                  'resampled': bool(settings.fps) and meta.source_fps not in (None, settings.fps),
                  'source_size_hw': list(meta.source_size), 'resized_size_hw': list(meta.size)},
        'array': {'file': array_name, 'sha256': array_sha256, 'shape': list(array.shape), 'dtype': 'float32',
                  'layout': layout_words(settings),
                  'layout_detail': describe_layout(settings, array.shape)},
        'model': model_info,
        'layer': describe_layer(settings, model_info),
        'settings': dict(settings.identity(), preset_sources=list(settings.sources)),
        'preprocessing': describe_preprocessing(settings),
        'crops': {'count': len(meta.crops), 'size': settings.crop_size,
                  'order': [c.describe() for c in meta.crops]},
        'snippets': snippets,
        'network': run_identity['network'],     # fast path, precision; on CUDA whether TF32 was allowed
        'identity_sha256': identity_sha256(run_identity),
    }


def describe_rule(settings: FeatureSettings, num_frames: int, count: int) -> str:
    s, st = settings.snippet, settings.stride
    if settings.align == 'centre':
        return (f'one {s}-frame window centred on every {st}th frame ([t - {s // 2}, t + {s - 1 - s // 2}]), '
                f'tail {settings.tail}: {count} windows for {num_frames} frames')
    formula = {'drop': f'floor((N - {settings.lookahead} - {s}) / {st}) + 1' if settings.lookahead
               else f'floor((N - {s}) / {st}) + 1',
               }.get(settings.tail, f'min(ceil((N - {s}) / {st}) + 1, ceil(N / {st}))')
    fill = {'drop': 'frames after the last whole snippet dropped', 'pad': 'the last snippet padded by repeating '
            'the last frame', 'loop': 'the last snippet wrapped to the first frames',
            'zero': 'the last snippet padded with zero frames'}[settings.tail]
    return f'{s}-frame snippets every {st} frames, {formula} = {count} for N = {num_frames}; {fill}'


def describe_layout(settings: FeatureSettings, shape) -> str:
    words = layout_words(settings).strip('()').split(', ')
    parts = []
    for word, size in zip(words, shape):
        parts.append({'snippets': f'{size} snippets in time order (see snippets.first_frame/last_frame)',
                      'crops': f'{size} crops in the order of crops.order',
                      'channels': f'{size} feature channels'}[word])
    return '; '.join(parts)


def describe_layer(settings: FeatureSettings, model_info: dict) -> dict:
    if settings.layer == 'pre_logits':
        return {'name': 'pre_logits', 'module': None,
                'pooling': 'the model\'s pre-logits feature: forward_head(forward_features(x), pre_logits=True); '
                           'res5 global average pool for the I3D/C2D ResNets, Mixed_5c (2, 7, 7) average '
                           'pool averaged over positions for Inception-I3D; no dropout, no classifier'}
    return {'name': settings.layer, 'module': model_info.get('layer_module'),
            'pooling': 'global average over (time, height, width) of that module\'s output'}


def describe_preprocessing(settings: FeatureSettings) -> dict:
    from eval.features.presets import NORMS
    norm = NORMS.get(settings.norm)
    return {'frames': 'every decoded frame at the native rate' if not settings.fps
            else f'video resampled to {settings.fps:g} fps (frame n = source frame floor(n * source_fps / fps))',
            'resize': settings.resize_rule.describe(),
            'values': ('model pretrained_cfg mean/std' if norm is None else
                       f'RGB, (x - {norm[0][0]}) / {norm[1][0]} on 0-255 pixels, float32'),
            'zero_frames': 'zero in the network input (after scaling)',
            'jpeg_roundtrip': ('video files read as ffmpeg -i VIDEO -start_number 0 %d.jpg then the JPEGs decoded '
                               '(see the run identity for the ffmpeg)' if settings.jpeg_roundtrip else
                               'none: video files decoded directly')}


# ----------------------------------------------------------------------------------- finished videos

def output_names(stem: str, fmt: str):
    return f'{stem}.{fmt}', f'{stem}.json'


def write_video_outputs(out_dir: str, video: VideoFeatures, settings: FeatureSettings, fmt: str,
                        run_identity: dict, model_info: dict, compile_record: Optional[dict] = None) -> dict:
    """Array first, sidecar last (the sidecar is what marks the video finished). Returns the sidecar;
    ``compile_record``: whether the network that made it was compiled (eval.kit.compiling)."""
    array = arrange(video.features, settings)
    data = array_bytes(array, fmt)
    array_name, sidecar_name = output_names(video.job.stem, fmt)
    with atomic_write(os.path.join(out_dir, array_name)) as f:
        f.write(data)
    sidecar = build_sidecar(video, array, array_name, sha256_bytes(data), settings, run_identity, model_info)
    if compile_record is not None:
        sidecar['compile'] = compile_record
    write_json(os.path.join(out_dir, sidecar_name), sidecar)
    clear_failure(out_dir, video.job.stem)            # an earlier run's failure, tried again and now done
    return sidecar


def finished_sidecar(out_dir: str, stem: str, fmt: str, run_identity_sha256: str) -> Optional[dict]:
    """The sidecar of a video finished by a run of this identity, its array verified; None otherwise."""
    array_name, sidecar_name = output_names(stem, fmt)
    try:
        with open(os.path.join(out_dir, sidecar_name), encoding='utf-8') as f:
            sidecar = json.load(f)
        if sidecar.get('identity_sha256') != run_identity_sha256:
            return None
        if sidecar['array']['file'] != array_name:
            return None
        if sha256_file(os.path.join(out_dir, array_name)) != sidecar['array']['sha256']:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sidecar


def index_entry(job, status: str, sidecar: Optional[dict] = None, reason: str = '') -> dict:
    entry = {'id': job.video_id, 'path': job.path, 'status': status}
    if sidecar is not None:
        entry.update(array=sidecar['array']['file'], sidecar=f'{job.stem}.json', shape=sidecar['array']['shape'],
                     frames=sidecar['video']['frames'], fps=sidecar['video']['fps'],
                     snippets=sidecar['snippets']['count'])
    if reason:
        entry['reason'] = reason
    return entry


def read_array(path: str) -> np.ndarray:
    """A feature array file as written by ``array_bytes`` (.npy, or .npz with key 'features')."""
    with open(path, 'rb') as f:
        loaded = np.load(f, allow_pickle=False)
        return loaded['features'] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded


def hdf5_available() -> bool:
    """Whether ``write_hdf5`` can run (h5py is an optional dependency: the project's 'hdf5' extra)."""
    import importlib.util
    return importlib.util.find_spec('h5py') is not None


def write_hdf5(out_dir: str, entries: List[dict], run_header: dict) -> int:
    """``<out>/features.h5``: every finished video of the index ``entries`` in one HDF5 file, written atomically.
    The per-video files stay the run's durable store (what a resumed run verifies); this file is rebuilt from
    them at the end of every run. Layout: root attributes ``format_version`` and ``run`` (JSON: preset,
    model, settings); one group per video, named by its output stem, with dataset ``features`` (the array,
    the same layout as the .npy), datasets ``first_frame``, ``last_frame``, ``start_seconds``,
    ``end_seconds`` (one value per snippet) and attributes ``id``, ``path``, ``fps``, ``frames``, ``layout``
    and ``sidecar`` (the whole sidecar JSON). Returns the number of videos in it."""
    import h5py
    finished = [e for e in entries if 'array' in e]
    with atomic_path(os.path.join(out_dir, HDF5)) as tmp:
        with h5py.File(tmp, 'w', track_order=True) as h5:
            h5.attrs['format_version'] = FORMAT_VERSION
            h5.attrs['run'] = json.dumps(run_header, allow_nan=False)
            for entry in finished:
                with open(os.path.join(out_dir, entry['sidecar']), encoding='utf-8') as f:
                    sidecar = json.load(f)
                group = h5.create_group(entry['sidecar'][:-len('.json')])
                group.create_dataset('features', data=read_array(os.path.join(out_dir, entry['array'])))
                for key in ('first_frame', 'last_frame'):
                    group.create_dataset(key, data=np.asarray(sidecar['snippets'][key], dtype=np.int64))
                for key in ('start_seconds', 'end_seconds'):
                    values = [math.nan if v is None else v for v in sidecar['snippets'][key]]
                    group.create_dataset(key, data=np.asarray(values, dtype=np.float64))
                group.attrs.update(id=entry['id'], path=sidecar['video']['path'], frames=sidecar['video']['frames'],
                                   fps=math.nan if sidecar['video']['fps'] is None else sidecar['video']['fps'],
                                   layout=sidecar['array']['layout'], sidecar=json.dumps(sidecar, allow_nan=False))
    return len(finished)


# ----------------------------------------------------------------------------------- failed videos

def failure_path(out_dir: str, stem: str) -> str:
    return os.path.join(out_dir, FAILED, f'{stem}.json')


def record_failure(out_dir: str, job, kind: str, reason: str, run_identity_sha256: str) -> dict:
    """A video that could not be extracted ('decode': unreadable, 'short': refused by the tail rule), kept
    durably as it happens so that a resumed run knows it (and leaves it alone unless --retry-failed)."""
    os.makedirs(os.path.join(out_dir, FAILED), exist_ok=True)
    record = {'id': job.video_id, 'path': job.path, 'kind': kind, 'reason': reason,
              'identity_sha256': run_identity_sha256}
    write_json(failure_path(out_dir, job.stem), record)
    return record


def recorded_failure(out_dir: str, stem: str, run_identity_sha256: str) -> Optional[dict]:
    """The failure an earlier run of this identity recorded for ``stem``, or None."""
    try:
        with open(failure_path(out_dir, stem), encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if record.get('identity_sha256') == run_identity_sha256 else None


def clear_failure(out_dir: str, stem: str) -> None:
    """Forget a recorded failure (the video has features now)."""
    try:
        os.remove(failure_path(out_dir, stem))
    except FileNotFoundError:
        pass
