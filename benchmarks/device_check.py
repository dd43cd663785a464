"""One command for a machine with a GPU: the device tests, then the speed of the three jobs, in one report.

    make setup && .venv/bin/python benchmarks/device_check.py      # from the repository root; ~8 min on an H200
    python benchmarks/device_check.py --device cpu --quick --out /tmp/dc   # CI-sized smoke run (~1 min on 2 cores)

What it measures (i3d_r50, random weights: the speed does not depend on them):
- scoring, network: clips/s of the inference fast path (zoo.inference.prepare_for_inference: BatchNorm
  folded, channels_last_3d) at 32x224, fp32 and bf16, batch 8 on a GPU (the scoring job's default) and 2 on
  a CPU; best of a few forwards after warm-up, as benchmarks/bench_network.py times it.
- scoring, end to end: clips/s of ``python -m eval --benchmark unlabelled --views 1x1 --random-weights`` over
  synthetic clips (decoding, batching, the network, the outputs), fp32 and bf16: videos scored / the job's
  own wall time from its summary.json (model build and decoder start-up included).
- features: snippets/s of ``python -m eval.features --preset i3d-r50-10crop --random-weights`` (16-frame
  snippets, 10 crops of 224 each) over synthetic clips: snippets written / the job's own wall time from its
  index.json (model build included); the job has no precision flag, so fp32 only.
- training: clips/s of one step of i3d_r50 at 32x224, batch 2 (forward, cross-entropy, backward, Nesterov SGD
  step; BatchNorm frozen as the fine-tuning job freezes it below 8 clips per device), fp32 and bf16 autocast,
  as benchmarks/bench_train.py's ``measure`` (peak memory on a GPU too).
Each rate also as GFLOP/s and as a fraction of the machine's measured peak for its precision
(benchmarks/machine.py: the best of a few GEMMs and a 1x1x1 convolution). FLOPs are 2 per multiply-add,
counted by torch.utils.flop_counter on the network (pooling and element-wise work not counted); training
counts 3x the forward (forward, and backward for activations and weights): an estimate.
- the jobs end to end (step bench_jobs): benchmarks/bench_jobs.py with --device, its JOBS_FULL form (scoring,
  features and fine-tuning at their real sizes, compiled, seconds per video / snippet / step by two-run
  differences, start-up, compile start, the process tree's peak PSS), or JOBS_QUICK with --quick; its own
  jobs-<device>-<time>.json / .txt beside this report, its rows in this one. --no-jobs skips it, --jobs-seconds
  caps it.
Recorded with them: torch, CUDA and cuDNN versions, the device name, the TF32 switches
(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) and cudnn.benchmark, as this
process found them (each job sets them for its own run, eval.kit.runtime.job_backend: TF32 off for fp32 and on
for bf16 / fp16, cudnn.benchmark on; put back when the job ends), the machine's load before and after.

The tests: the rows of ``TESTS`` below (pytest, one run per row), the test files that go through device choice
and precision. The jobs' command lines default to CUDA when it is present, so with ``--device cuda`` their tests
run on the GPU; with ``--device cpu`` they run with CUDA_VISIBLE_DEVICES='' (cuda:N: CUDA_VISIBLE_DEVICES=N).
They run last, with the time that is left: the measurements are what a device check cannot get elsewhere.

Time: ``--time-budget`` seconds in all (default 480). A step that finds too little time left is recorded as
'skipped: out of time' and is not run; a job or pytest run still going when the budget ends is stopped and
recorded so. Exit status 1 when any step failed (each failure recorded in the JSON), else 0.

Outputs: ``<out>/device-<cuda|cpu>-<YYYYmmdd-HHMMSS>.json`` (everything) and ``.txt`` (the table, also printed);
--out defaults to benchmarks/. Both written atomically.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

import zoo  # noqa: E402
from benchmarks.machine import machine_info, machine_load, machine_peak  # noqa: E402
from benchmarks.timing import best_seconds  # noqa: E402
from zoo.inference import prepare_for_inference  # noqa: E402

MODEL = 'i3d_r50'

# The tests step, one pytest run per row, in this order:
#   (file, -k expression of the full run (None: the whole file), -k expression with --quick (None: the whole
#    file; False: not run with --quick), why it is here)
# The jobs' command lines (eval, eval.features, eval.finetune) pick CUDA when present: their tests below run on
# the GPU with --device cuda. Kept under ~4 minutes on 2 CPU cores in all.
TESTS = (
    ('tests/test_runtime.py', None, None,
     'the runtime rules: precision table, device choice, TF32 and cudnn.benchmark per job, pinned copies'),
    ('tests/test_zoo_inference.py', None, 'bf16 or precision',
     'the fast path: folded BN, bf16 with a float32 head, an unknown precision refused, torch.compile'),
    ('tests/test_benchmarks.py', 'best_seconds or peak', 'best_seconds',
     'the timing and peak helpers this script uses (synchronising an accelerator)'),
    ('tests/test_finetune.py', 'bf16 or fp16 or checkpointing or overfits or saved_weights or kill', 'bf16 or fp16',
     'fine-tuning on the default device: bf16 / fp16 and their refusals, checkpointing, resume after kill -9'),
    ('tests/test_eval_resume.py', 'precision or eager', False,
     'scoring on the default device: the eager model scores as the fast path; precision recorded, a change refused'),
    ('tests/test_features_cli.py', 'every_video or npz or same_run_twice', False,
     'feature extraction on the default device: arrays and sidecars, bit-identical files from a second run'),
    ('tests/test_zoo_timm_contract.py', 'device_and_dtype', False,
     'device and dtype at model creation and at reset_classifier'),
)

# Sizes of the full run and of --quick: (frames, crop) per job, batches, clips written for the jobs.
FULL = dict(score=(32, 224), train=(32, 224), snippet=16, snippet_crop=224, resize='340x256', rate=2,
            clip_frames=160, clip_size=(320, 240), clips=16, e2e_videos=64, repeats=5, warmup=2,
            at_least_s=1.0, peak_seconds=1.0, peak_shapes=None)
# Training at 32 frames (of 32 pixels) with --quick: i3d_r50 halves time twice, and below 32 frames some 3x1x1
# convolution sees 2 frames, where PyTorch's CPU bf16 backward computes NaN (measured: a NaN loss at 16x56; the
# fine-tuning job refuses that case on the CPU).
QUICK = dict(score=(8, 56), train=(32, 32), snippet=8, snippet_crop=56, resize='80x64', rate=1,
             clip_frames=16, clip_size=(80, 64), clips=2, e2e_videos=2, repeats=1, warmup=0,
             at_least_s=0.0, peak_seconds=0.25,
             peak_shapes=dict(gemms=((512, 512, 512),), convs=((1, 256, 256, 2, 14, 14),)))

PRECISIONS = ('fp32', 'bf16')
# benchmarks/bench_jobs.py's arguments (besides --device, --tag, --out-dir) for its step: the three jobs' real
# command lines end to end (two-run differences, compile start, the process tree's peak PSS). The full form leaves
# out its memory part (30k-frame videos: CPU decoding, not the device) and runs fewer videos and steps than its
# own default, to fit the budget; --quick runs its smallest form (scoring fp32, no compiling).
JOBS_FULL = ('--only', 'scoring,features,finetune', '--n-videos', '1,3', '--steps', '2,6')
JOBS_QUICK = ('--quick', '--only', 'scoring', '--precisions', 'fp32', '--compile-in', 'none')
# (job, measurement key): every key the JSON's 'measurements' has, in the table's order
MEASUREMENTS = (
    ('scoring', 'scoring_network_fp32'), ('scoring', 'scoring_network_bf16'),
    ('scoring', 'scoring_end_to_end_fp32'), ('scoring', 'scoring_end_to_end_bf16'),
    ('features', 'features_10crop_fp32'),
    ('training', 'training_fp32'), ('training', 'training_bf16'),
)


class OutOfTime(Exception):
    """A step or a job it ran found the budget spent."""


class Budget:
    def __init__(self, seconds: float):
        self.total, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise OutOfTime(f'{self.left():.0f} s of the {self.total:.0f} s budget left, {what} needs ~{seconds:.0f} s')


# --------------------------------------------------------------------------------------------- environment

def environment(device: torch.device) -> dict:
    env = {'torch': torch.__version__, 'python': platform.python_version(), 'device': str(device),
           'cuda_available': torch.cuda.is_available(), 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
           'tf32': {'cuda.matmul.allow_tf32': torch.backends.cuda.matmul.allow_tf32,
                    'cudnn.allow_tf32': torch.backends.cudnn.allow_tf32,
                    'float32_matmul_precision': torch.get_float32_matmul_precision()},
           'cudnn.benchmark': torch.backends.cudnn.benchmark,
           'cudnn.deterministic': torch.backends.cudnn.deterministic,
           'threads': torch.get_num_threads(), 'machine': machine_info(device)}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env['device_memory_gb'] = round(props.total_memory / 2 ** 30, 1)
        env['capability'] = f'{props.major}.{props.minor}'
        env['device_name'] = torch.cuda.get_device_name(device)
    return env


def peaks(device: torch.device, sizes: dict) -> Dict[str, dict]:
    out = {}
    for precision, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        p = machine_peak(dtype, device, sizes['peak_seconds'], **(sizes['peak_shapes'] or {}))
        out[precision] = {'gflops_per_s': p.gflops_per_s, 'best_probe': p.best_probe, 'probes': p.probes}
    return out


@functools.lru_cache(maxsize=None)
def forward_flops(frames: int, crop: int, features_only: bool = False) -> float:
    """FLOPs (2 per multiply-add) of one clip through the network (or its pooled features), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    model = zoo.create_model(MODEL, device='meta').eval()
    x = torch.empty(1, 3, frames, crop, crop, device='meta')
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if features_only:
            model.forward_head(model.forward_features(x), pre_logits=True)
        else:
            model(x)
    return float(counter.get_total_flops())


def with_rate(result: dict, rate: float, unit: str, flops_per_item: float, precision: str, peak: dict) -> dict:
    """``rate`` items/s under ``unit``'s key and 'rate', with GFLOP/s and the fraction of ``precision``'s peak."""
    gflops = rate * flops_per_item / 1e9
    key = {'clips/s': 'clips_per_s', 'snippets/s': 'snippets_per_s'}[unit]
    result.update({key: rate, 'rate': rate, 'unit': unit, 'gflops_per_item': flops_per_item / 1e9,
                   'gflops_per_s': gflops, 'peak_precision': precision,
                   'fraction_of_peak': gflops / peak[precision]['gflops_per_s'] if peak.get(precision) else None})
    return result


def release(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- measurements

def score_network(precision: str, device: torch.device, sizes: dict, batch: int, peak: dict) -> dict:
    frames, crop = sizes['score']
    torch.manual_seed(0)
    model = zoo.create_model(MODEL).eval()
    fast = prepare_for_inference(model, precision=precision, device=device)
    del model
    x = torch.randn(batch, 3, frames, crop, crop, device=device)
    seconds, out = best_seconds(lambda: fast(x), sizes['repeats'], warmup=sizes['warmup'], device=device,
                                at_least_s=sizes['at_least_s'])
    if not torch.isfinite(out).all():
        raise RuntimeError(f'non-finite logits from the {precision} fast path')
    result = {'job': 'scoring', 'what': f'{MODEL} fast path (prepare_for_inference), forward only',
              'size': f'{frames}x{crop}', 'batch': batch, 'precision': precision, 'seconds_per_batch': seconds}
    return with_rate(result, batch / seconds, 'clips/s', forward_flops(frames, crop), precision, peak)


def train_step_rate(precision: str, device: torch.device, sizes: dict, batch: int, peak: dict) -> dict:
    frames, crop = sizes['train']
    torch.manual_seed(0)
    model = zoo.create_model(MODEL, num_classes=101).to(device)
    model.train()
    for m in model.modules():          # frozen BN below 8 clips per device, as the fine-tuning job's 'auto'
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    # the fine-tuning recipe's groups: weight decay 1e-4 on conv and linear weights, none on BN or biases
    params = list(model.parameters())
    groups = [{'params': [p for p in params if p.ndim > 1], 'weight_decay': 1e-4},
              {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1, 1)
    inv_std = 1 / torch.tensor(cfg.std, device=device).view(1, 3, 1, 1, 1)
    clips = torch.randint(0, 256, (batch, frames, crop, crop, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 101, (batch,), device=device)

    def step():
        x = clips.permute(0, 4, 1, 2, 3).float().sub_(mean).mul_(inv_std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    seconds, loss = best_seconds(step, sizes['repeats'], warmup=sizes['warmup'], device=device,
                                 at_least_s=sizes['at_least_s'])
    loss = float(loss)
    if not math.isfinite(loss):
        raise RuntimeError(f'non-finite loss {loss} in {precision} training')
    result = {'job': 'training', 'what': f'{MODEL} step: forward, loss, backward, Nesterov SGD (BN frozen)',
              'size': f'{frames}x{crop}', 'batch': batch, 'precision': precision, 'seconds_per_step': seconds,
              'loss': loss, 'flops_note': 'GFLOP per clip: 3x the forward (estimate)'}
    if device.type == 'cuda':
        result['peak_memory_mb'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return with_rate(result, batch / seconds, 'clips/s', 3 * forward_flops(frames, crop), precision, peak)


def write_clip(path: str, frames: int, width: int, height: int, seed: int, fps: int = 25) -> None:
    """A short H.264 clip of moving colour gradients (codec-friendly, different in every frame)."""
    import av
    import numpy as np
    rng = np.random.default_rng(seed)
    phase, freq = rng.uniform(0, 2 * math.pi, 3), rng.uniform(0.5, 2.0, 3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=fps, options={'preset': 'ultrafast', 'crf': '18'})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for t in range(frames):
            image = np.stack([128 + 100 * np.sin(2 * math.pi * (freq[c] * x / width + 0.5 * y / height + t / 25)
                                                 + phase[c]) for c in range(3)], axis=-1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_clips(folder: str, sizes: dict) -> List[str]:
    os.makedirs(folder, exist_ok=True)
    width, height = sizes['clip_size']
    paths = [os.path.join(folder, f'clip{i:03d}.mp4') for i in range(sizes['clips'])]
    for i, path in enumerate(paths):
        write_clip(path, sizes['clip_frames'], width, height, seed=i)
    return paths


def run_job(command: List[str], budget: Budget, log: str) -> float:
    """Run a job's command line (cwd: the repository), its output to ``log``; its wall seconds. Stopped, and
    OutOfTime raised, when the budget ends first; RuntimeError with the output's tail on a non-zero exit."""
    start = time.monotonic()
    with open(log, 'w') as f:
        try:
            proc = subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=max(1.0, budget.left()))
        except subprocess.TimeoutExpired:
            raise OutOfTime(f'stopped after {time.monotonic() - start:.0f} s: the budget ended') from None
    if proc.returncode != 0:
        with open(log) as f:
            raise RuntimeError(f'exit status {proc.returncode}: ' + f.read()[-3000:])
    return time.monotonic() - start


def score_end_to_end(precision: str, device: torch.device, sizes: dict, clips: List[str], work: str,
                     budget: Budget, peak: dict) -> dict:
    frames, crop = sizes['score']
    data = os.path.join(work, 'e2e-data')
    if not os.path.isdir(data):     # e2e_videos entries: links to the written clips, scored as different videos
        os.makedirs(data)
        for i in range(sizes['e2e_videos']):
            os.symlink(clips[i % len(clips)], os.path.join(data, f'video{i:04d}.mp4'))
    out = os.path.join(work, f'e2e-{precision}')
    command = [sys.executable, '-m', 'eval', '--benchmark', 'unlabelled', '--data', data, '--views', '1x1',
               '--random-weights', '--model', MODEL, '--frames', str(frames), '--rate', str(sizes['rate']),
               '--crop', str(crop), '--scale', str(256 if crop == 224 else crop + crop // 7),
               '--precision', precision, '--device', str(device), '--no-flops', '--no-progress', '--out', out]
    wall = run_job(command, budget, out + '.log')
    with open(os.path.join(out, 'summary.json')) as f:
        summary = json.load(f)
    scored, seconds = summary['counts']['scored'], summary['seconds']
    if scored != sizes['e2e_videos']:
        raise RuntimeError(f'{scored} of {sizes["e2e_videos"]} videos scored')
    result = {'job': 'scoring', 'what': 'python -m eval --benchmark unlabelled --views 1x1 (end to end)',
              'size': f'{frames}x{crop}', 'batch': 'job default', 'precision': precision, 'videos': scored,
              'job_seconds': seconds, 'process_seconds': wall, 'rate_from': 'summary.json: scored / seconds',
              'command': ' '.join(command[1:])}
    return with_rate(result, scored / seconds, 'clips/s', forward_flops(frames, crop), precision, peak)


def features(device: torch.device, sizes: dict, clips: List[str], work: str, budget: Budget, peak: dict) -> dict:
    out = os.path.join(work, 'features')
    command = [sys.executable, '-m', 'eval.features', '--preset', 'i3d-r50-10crop', '--random-weights',
               '--model', MODEL, '--data', os.path.dirname(clips[0]), '--out', out, '--device', str(device),
               '--no-progress']
    if sizes['snippet'] != 16:        # --quick: smaller snippets, frames and crops, the preset otherwise
        command += ['--snippet', str(sizes['snippet']), '--stride', str(sizes['snippet']),
                    '--resize', sizes['resize'], '--crop-size', str(sizes['snippet_crop'])]
    wall = run_job(command, budget, out + '.log')
    with open(os.path.join(out, 'index.json')) as f:
        index = json.load(f)
    videos = [v for v in index['videos'] if v.get('status') == 'extracted']
    if len(videos) != len(clips):
        raise RuntimeError(f'{len(videos)} of {len(clips)} videos extracted: {index.get("failures")}')
    snippets, crops = sum(v['snippets'] for v in videos), index['settings']['crops']
    shapes = {tuple(v['shape']) for v in videos}
    if crops != 10 or any(s[1:] != (10, 2048) for s in shapes):
        raise RuntimeError(f'expected (snippets, 10, 2048) arrays, got {sorted(shapes)}')
    seconds = index['run']['seconds']
    result = {'job': 'features', 'what': 'python -m eval.features --preset i3d-r50-10crop (10 crops per snippet)',
              'size': f'{sizes["snippet"]}x{sizes["snippet_crop"]}', 'crops': crops, 'batch': 'job default',
              'precision': 'fp32', 'videos': len(videos), 'snippets': snippets, 'job_seconds': seconds,
              'process_seconds': wall, 'rate_from': 'index.json: sum of snippets / run.seconds',
              'command': ' '.join(command[1:])}
    flops = crops * forward_flops(sizes['snippet'], sizes['snippet_crop'], features_only=True)
    return with_rate(result, snippets / seconds, 'snippets/s', flops, 'fp32', peak)


def bench_jobs(device: torch.device, quick: bool, out: str, tag: str, budget: Budget, cap_s: float,
               work: str) -> dict:
    """benchmarks/bench_jobs.py run as a subprocess (JOBS_FULL or JOBS_QUICK), its report written beside this
    one as jobs-<tag>.json / .txt; stopped (OutOfTime) after ``cap_s`` or when the budget ends."""
    command = [sys.executable, os.path.join('benchmarks', 'bench_jobs.py'), '--device', str(device), '--tag', tag,
               '--out-dir', out, *(JOBS_QUICK if quick else JOBS_FULL)]
    log = os.path.join(work, 'bench_jobs.log')
    seconds = run_job(command, _CappedBudget(budget, cap_s), log)
    path = os.path.join(out, f'jobs-{tag}.json')
    with open(path) as f:
        jobs = json.load(f)
    rows = {}
    for part, result in jobs['parts'].items():
        for precision in PRECISIONS:
            row = result.get(precision) if isinstance(result, dict) else None
            if row:
                rows[f'{part}_{precision}'] = {k: row.get(k) for k in (
                    'per', f'seconds_per_{row["per"]}', 'startup_s', 'gflops_per_s', 'fraction_of_peak',
                    'peak_pss_mb')}
    return {'command': ' '.join(command[1:]), 'seconds': seconds, 'json': path, 'rows': rows,
            'compile_start_s': jobs['parts'].get('scoring', {}).get('compile_start', {}).get('seconds'),
            'errors': jobs['errors']}


class _CappedBudget(Budget):
    """A budget's remaining time, capped at ``cap_s`` from now."""

    def __init__(self, budget: Budget, cap_s: float):
        super().__init__(min(budget.left(), cap_s))


# --------------------------------------------------------------------------------------------- tests

def pytest_env(device: torch.device) -> dict:
    env = dict(os.environ)
    if device.type == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
    elif device.index is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(device.index)
    return env


def run_tests(device: torch.device, quick: bool, budget: Budget, work: str) -> dict:
    rows, start = [], time.monotonic()
    for path, full_k, quick_k, why in TESTS:
        select = quick_k if quick else full_k
        row = {'file': path, 'k': select, 'why': why}
        rows.append(row)
        if quick and select is False:
            row.update(status='not run', reason='not in --quick')
            continue
        if not os.path.exists(os.path.join(REPO, path)):
            row.update(status='failed', reason=f'{path} not found: update TESTS in benchmarks/device_check.py')
            continue
        if budget.left() < 15:
            row.update(status='skipped', reason='out of time')
            continue
        command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', path] + \
            (['-k', select] if select else [])
        row['command'] = ' '.join(command[1:])
        began = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=REPO, env=pytest_env(device), capture_output=True, text=True,
                                  timeout=budget.left())
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
            row.update(status='skipped', reason=f'out of time: stopped after {time.monotonic() - began:.0f} s',
                       seconds=time.monotonic() - began, output_tail=out[-2000:])
            continue
        output = proc.stdout + proc.stderr
        summary = [line for line in output.strip().splitlines() if re.search(r'\d+ (passed|failed|error)', line)]
        row.update(seconds=time.monotonic() - began, exit_status=proc.returncode,
                   summary=summary[-1].strip('= ') if summary else '')
        for word in ('passed', 'failed', 'skipped', 'deselected', 'error'):
            m = re.search(rf'(\d+) {word}', row['summary'])
            row[word] = int(m.group(1)) if m else 0
        if proc.returncode == 0:
            row['status'] = 'ok'
        else:   # 5: nothing collected (the -k matches no test any more): the table needs updating
            row.update(status='failed', output_tail=output[-3000:],
                       reason='no test selected' if proc.returncode == 5 else f'pytest exit status {proc.returncode}')
    failed = [r['file'] for r in rows if r['status'] == 'failed']
    status = 'failed' if failed else 'skipped' if any(r['status'] == 'skipped' for r in rows) else 'ok'
    return {'status': status, 'seconds': time.monotonic() - start, 'device_for_tests': str(device),
            'cuda_visible_devices': pytest_env(device).get('CUDA_VISIBLE_DEVICES'), 'rows': rows,
            'reason': f'failed: {", ".join(failed)}' if failed else ''}


# --------------------------------------------------------------------------------------------- report

def fmt(value, spec: str, none: str = '-') -> str:
    return none if value is None else format(value, spec)


def text_table(report: dict) -> str:
    env, lines = report['environment'], []
    lines.append(f'device check {report["created"]}  ({"--quick" if report["quick"] else "full"}, '
                 f'{report["elapsed_s"]:.0f} s of a {report["time_budget_s"]:.0f} s budget) -> '
                 f'{"OK" if report["ok"] else "FAILED: " + ", ".join(report["failed"])}')
    lines.append(f'torch {env["torch"]}, CUDA {env["cuda"]}, cuDNN {env["cudnn"]}, device {env["device"]}'
                 + (f' ({env["device_name"]}, {env.get("device_memory_gb")} GB)' if env['device_name'] else
                    f' ({env["machine"].get("cpu", "")}, {env["threads"]} threads)'))
    tf32 = env['tf32']
    lines.append(f'TF32: cuda.matmul.allow_tf32={tf32["cuda.matmul.allow_tf32"]}, cudnn.allow_tf32='
                 f'{tf32["cudnn.allow_tf32"]}, float32_matmul_precision={tf32["float32_matmul_precision"]}; '
                 f'cudnn.benchmark={env["cudnn.benchmark"]}')
    for precision, p in (report.get('peak') or {}).items():
        lines.append(f'peak {precision}: {p["gflops_per_s"]:.1f} GFLOP/s ({p["best_probe"]})')
    lines.append('')
    lines.append(f'{"job":<9} {"measurement":<24} {"size":>7} {"batch":>11} {"prec":>5} {"rate":>10} {"unit":<10} '
                 f'{"GFLOP/s":>9} {"of peak":>8}  status')
    for job, key in MEASUREMENTS:
        m = report['measurements'].get(key, {'status': 'not run'})
        status = m['status'] + (f': {m["reason"]}' if m.get('reason') else '')
        lines.append(f'{job:<9} {key:<24} {m.get("size", "-"):>7} {str(m.get("batch", "-")):>11} '
                     f'{m.get("precision", "-"):>5} {fmt(m.get("rate"), "10.2f"):>10} {m.get("unit", "-"):<10} '
                     f'{fmt(m.get("gflops_per_s"), "9.1f"):>9} '
                     f'{fmt(m.get("fraction_of_peak"), ".1%"):>8}  '
                     f'{status[:160]}')
    jobs = report.get('bench_jobs')
    if jobs:
        lines.append('')
        lines.append(f'bench_jobs ({jobs["json"]}; compile start {fmt(jobs["compile_start_s"], ".1f")} s):')
        for key, r in jobs['rows'].items():
            lines.append(f'  {key:<16} {fmt(r.get("seconds_per_" + r["per"]), "9.3f")} s/{r["per"]:<8} start-up '
                         f'{fmt(r["startup_s"], "6.1f")} s {fmt(r["gflops_per_s"], "9.1f")} GFLOP/s '
                         f'{fmt(r["fraction_of_peak"], ".1%"):>7} of peak, tree PSS {fmt(r["peak_pss_mb"], ".0f")} MB')
    tests = report.get('tests')
    lines.append('')
    if tests is None:
        lines.append('tests: not run (--no-tests)')
    else:
        lines.append(f'tests ({tests["status"]}, {tests["seconds"]:.0f} s, CUDA_VISIBLE_DEVICES='
                     f'{tests["cuda_visible_devices"]!r}):')
        for r in tests['rows']:
            select = '(whole file)' if r['k'] is None else '-' if r['k'] is False else f'-k {r["k"]}'
            lines.append(f'  {r["file"]:<34} {select:<60} {r["status"]:<8} '
                         f'{r.get("summary") or r.get("reason", "")}'[:200])
    lines.append('')
    for name, s in report['steps'].items():
        lines.append(f'step {name:<26} {s["status"]:<8} {s["seconds"]:7.1f} s  {s.get("reason", "")[:160]}')
    return '\n'.join(lines) + '\n'


def write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- main

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cuda, cuda:N or cpu (default: cuda when present)')
    parser.add_argument('--quick', action='store_true',
                        help='CI-sized: 8x56 clips (training 32x32), 2 tiny synthetic clips, 1 repeat, tiny peak '
                             'probes, the fast subset of the tests')
    parser.add_argument('--no-tests', dest='tests', action='store_false', help='skip the tests step')
    parser.add_argument('--time-budget', type=float, default=480.0,
                        help='seconds for everything (default 480); a step that finds too little left is skipped')
    parser.add_argument('--score-batch', type=int, help='clips per forward of the scoring network '
                        '(default: 8 on a GPU, the scoring job\'s default there; 2 on a CPU)')
    parser.add_argument('--train-batch', type=int, default=2, help='clips per training step (default 2)')
    parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks'),
                        help='folder for device-<cuda|cpu>-<time>.json and .txt (default benchmarks/)')
    parser.add_argument('--keep-work', action='store_true', help='keep the clips and the jobs\' outputs and logs')
    parser.add_argument('--no-jobs', dest='jobs', action='store_false',
                        help='skip the bench_jobs step (benchmarks/bench_jobs.py: the jobs end to end)')
    parser.add_argument('--jobs-seconds', type=float, default=300.0,
                        help='at most this many seconds of the budget for the bench_jobs step (default 300)')
    args = parser.parse_args(argv)

    budget = Budget(args.time_budget)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)')
    if device.type == 'cuda' and device.index is not None:
        torch.cuda.set_device(device)
    sizes = QUICK if args.quick else FULL
    score_batch = args.score_batch or (8 if device.type == 'cuda' else 2)
    zoo.keep_freed_memory()      # as the jobs keep the heap (zoo.heap): the in-process rates then compare
    created = datetime.datetime.now()
    stem = f'device-{device.type}-{created:%Y%m%d-%H%M%S}'
    report = {'format': 'device_check/1', 'created': created.isoformat(timespec='seconds'),
              'command': ' '.join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else 'device_check.py']
                                  + (argv if argv is not None else sys.argv[1:])),
              'quick': args.quick, 'time_budget_s': args.time_budget, 'model': MODEL,
              'sizes': {k: v for k, v in sizes.items() if k != 'peak_shapes'},
              'load_before': machine_load(), 'environment': environment(device), 'peak': {},
              'measurements': {}, 'bench_jobs': None, 'tests': None, 'steps': {}}
    peak = report['peak']
    work = tempfile.mkdtemp(prefix='device-check-')
    clips: List[str] = []

    def step(name: str, needs_s: float, fn: Callable[[], Optional[dict]], measurement: Optional[str] = None):
        began = time.monotonic()
        record: dict = {}
        ran = False
        try:
            budget.need(needs_s, name)
            ran = True
            result = fn()
            record = {'status': 'ok'}
            if measurement:
                record = dict(result, status='ok')
        except OutOfTime as e:
            record = {'status': 'skipped', 'reason': f'out of time: {e}'}
        except Exception as e:  # noqa: BLE001  (recorded, and the exit status says so)
            record = {'status': 'failed', 'reason': f'{type(e).__name__}: {e}'[:4000],
                      'traceback': traceback.format_exc()[-4000:]}
        if ran:
            release(device)     # the step's tensors (and on a GPU their cached blocks) go before the next one
        seconds = time.monotonic() - began
        report['steps'][name] = {'status': record['status'], 'seconds': seconds, 'reason': record.get('reason', '')}
        if measurement:
            report['measurements'][measurement] = record
        print(f'[{budget.total - budget.left():6.1f} s] {name}: {record["status"]} ({seconds:.1f} s)'
              + (f' {record.get("rate", 0):.3f} {record.get("unit", "")}' if record['status'] == 'ok' and measurement
                 else '') + (f' -- {record["reason"][:300]}' if record.get('reason') else ''), flush=True)

    def scale(quick_s: float, full_s: float) -> float:
        return quick_s if args.quick else full_s

    try:
        step('peak', scale(1, 20), lambda: peak.update(peaks(device, sizes)))
        for precision in PRECISIONS:
            step(f'scoring_network_{precision}', scale(2, 20),
                 lambda p=precision: score_network(p, device, sizes, score_batch, peak), f'scoring_network_{precision}')
        for precision in PRECISIONS:
            step(f'training_{precision}', scale(2, 20),
                 lambda p=precision: train_step_rate(p, device, sizes, args.train_batch, peak), f'training_{precision}')
        step('clips', scale(1, 15), lambda: clips.extend(write_clips(os.path.join(work, 'clips'), sizes)))
        if clips:
            step('features_10crop_fp32', scale(5, 40),
                 lambda: features(device, sizes, clips, work, budget, peak), 'features_10crop_fp32')
            for precision in PRECISIONS:
                step(f'scoring_end_to_end_{precision}', scale(5, 30),
                     lambda p=precision: score_end_to_end(p, device, sizes, clips, work, budget, peak),
                     f'scoring_end_to_end_{precision}')
        else:
            status = report['steps']['clips']['status']     # skipped (out of time) or failed
            for key in ('features_10crop_fp32',) + tuple(f'scoring_end_to_end_{p}' for p in PRECISIONS):
                report['measurements'][key] = {'status': status, 'reason': f'no synthetic clips: step clips {status}'
                                               + (': out of time' if status == 'skipped' else '')}
        if args.jobs:
            def jobs_step():
                tag = f'{device.type}-{created:%Y%m%d-%H%M%S}'     # jobs-<device>-<time>.json / .txt
                report['bench_jobs'] = bench_jobs(device, args.quick, args.out, tag, budget, args.jobs_seconds, work)
                if report['bench_jobs']['errors']:
                    raise RuntimeError(f'bench_jobs: {report["bench_jobs"]["errors"]}')
            step('bench_jobs', scale(20, 120), jobs_step)
        if args.tests:
            def tests():
                report['tests'] = run_tests(device, args.quick, budget, work)
                if report['tests']['status'] == 'failed':
                    raise RuntimeError(report['tests']['reason'])
                if report['tests']['status'] == 'skipped':
                    raise OutOfTime('some test files were not run or were stopped')
            step('tests', 15, tests)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            report['work'] = work
    report['load_after'] = machine_load()
    report['elapsed_s'] = time.monotonic() - budget.start
    failed = [name for name, s in report['steps'].items() if s['status'] == 'failed']
    failed += [k for k, m in report['measurements'].items() if m['status'] == 'failed' and k not in failed]
    report['failed'], report['ok'] = failed, not failed
    table = text_table(report)
    write_atomically(os.path.join(args.out, stem + '.json'), json.dumps(json_safe(report), indent=2) + '\n')
    write_atomically(os.path.join(args.out, stem + '.txt'), table)
    print()
    print(table, end='')
    print(f'wrote {os.path.join(args.out, stem)}.json and .txt')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
