"""The three jobs' real command lines, end to end, in one run: seconds per video / snippet / step, start-up,
compile start, GFLOP/s as a fraction of the machine's peak, and the peak memory of each job's process tree.

    python benchmarks/bench_jobs.py                      # everything; writes benchmarks/jobs-<tag>.txt and .json
    python benchmarks/bench_jobs.py --quick              # smoke-sized, writes jobs-quick-cpu.*; ~3-5 min on 2 cores
    python benchmarks/bench_jobs.py --only scoring,finetune --device cuda --tag h200

Every job runs as a subprocess, its command line as a user would type it, on synthetic videos written to a temp
folder (eval.data.synthetic content, H.264):
- peak: benchmarks/machine.py's machine_peak for float32 and bfloat16 (the best of a few GEMMs and a 1x1x1 conv),
  probed at the start, before every part and at the end: this machine's speed drifts by 10-50% within an hour
  (one run's first probe read 198 GFLOP/s fp32 and later jobs ran at up to 207). Each job's line prints its
  fraction of the probe just before its part; the final table, the JSON's ``fraction_of_peak`` and ``peak`` use
  the run's best probe per precision (the most conservative figure; ``peak_probes`` keeps every probe). The
  ``network`` part's fractions stay against the probe just before it (its stem and rest are compared together).
- scoring: ``python -m eval --benchmark unlabelled --views 3x10 --model i3d_r50 --random-weights`` on 456x256,
  250-frame videos (the Kinetics geometry), fp32 and bf16. Two runs, of N1 and N2 videos: seconds per video =
  (t(N2) - t(N1)) / (N2 - N1) (start-up cancels), start-up = t(N1) - N1 x seconds per video. GFLOP per video:
  the job's own fvcore count (summary.json 'flops', 1 MAC = 1 flop) x 2, as bench_network counts against the
  peak (i3d_r50 3x10 at 32x256, fully-convolutional head: ~2,587 GFLOP).
- features: ``python -m eval.features --model i3d_r50 --random-weights`` with the default preset
  (i3d-r50-10crop: 16-frame snippets every 16 frames, 10 crops of 224), fp32 and bf16, the same two-run
  difference over the same videos; per snippet = per video / snippets per video. GFLOP per snippet: fvcore's
  count of forward_features + the pooled pre-logits head on one (3, 16, 224, 224) crop, x crops x 2.
- finetune: ``python -m eval.finetune --model i3d_r50`` (random initialisation) on a synthetic ``path label``
  list, 32x224, global batch 2, one epoch, fp32 and bf16; two runs of S1 and S2 steps (S x batch clips):
  seconds per step by the difference; GFLOP per step = 3 x the forward of the batch (backward = 2 forwards).
- compile: every job command gets the compile flag (``--compile-flag``, default --compile) where its --help
  lists it (eval.finetune has none today: recorded); each run gets a fresh TORCHINDUCTOR_CACHE_DIR, so every
  compiled run compiles cold. The difference is taken over each run's seconds less the compile start the job
  measured itself (its first pass less its later ones, summary.json / index.json ``compile.start_s``): a cold
  compile varies by seconds between runs of the same command, which a difference over a few items would count as
  per-item time (``work_seconds``; the plain difference is kept as ``seconds_per_<item>_with_compile_noise``).
  Scoring fp32 also runs N1 videos eager (``--eager-flag``, default --no-compile, only when the job's --help lists
  it, else no flag): compile start = start-up(compiled) - start-up(eager). What each job's own summary / manifest
  says about compiling ('compile' keys of its JSON outputs) is recorded and printed.
- memory: every run's peak memory is the maximum, sampled every 0.5 s, of the summed PSS
  (/proc/PID/smaps_rollup) of the job's process and all its descendants (DataLoader workers, ffmpeg,
  torch.compile's workers): TreePss below. Memory vs video length: one 340x256 video of ~1k, ~10k and ~30k
  frames through ``eval.features --crops 1 --stride <--memory-stride>`` with --workers 0, 1, 2 (9 runs): a large
  stride keeps the network a small part, while the decoder still reads (and the JPEG round trip encodes and
  decodes) every frame. Flat in length, per worker count: the peaks from the second length on within
  --flat-ratio (the ~1k-frame run ends in ~8 s, before the job's kept heap levels off at ~10-12 s, measured) and
  the longest run's late growth (the peak of its second half over its first half's, sampled every 0.5 s) under
  1.05: a single peak varies ~5-10% between runs of the same length (where the heap's blocks land), the late
  growth does not. The cost of a worker = peak with 1 worker - with 0.
- network: scoring's network alone, in this process, as the job builds it (eval.kit.loop.prepare_model, compiled
  by eval.kit.compiling.compiled_inference unless 'network' is left out of --compile-in; uint8 views in, normalised
  by the network, in its graph when compiled, as the job feeds it), at 32x256 with the
  fully-convolutional head and the job's batch, per precision: its GFLOP/s as a fraction of the peak, and its stem
  convolution (i3d_r50's conv1: 3 input channels) timed alone, the same oneDNN call eager: its share of the FLOPs,
  its fraction of the peak, the rest's, and the network's ceiling were everything but the stem at the peak. This
  is where scoring's end-to-end figure stops when it matches the network's. Then fine-tuning's step alone
  (training_alone: the network as eval.finetune builds it, eager, one forward + backward + SGD step of the job's
  batch): its fraction of the peak is the finetune row's bound, and the job's step over it what the job adds. The
  network part keeps the heap as the jobs do (zoo.heap.keep_freed_memory).
- repeats: every rate row's two runs are repeated (--repeats, default 2: N1, N2, N1, N2) and the fastest run of
  each size is used: other work on a shared machine only ever adds time (the peak probe is a best-of too). Each
  run and probe records the share of the machine's CPU time the hypervisor took ("steal", /proc/stat): 2% in a
  quiet minute on the 2-core AMD EPYC, 7.5% in one where the same forward pass ran 1.5x slower (measured).

Figures are wall times of whole processes on whatever else the machine runs: the load before and after is
recorded with them. Outputs: benchmarks/jobs-<tag>.txt (the printed table) and .json (every figure and run).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):   # run as a script: import this checkout's packages, benchmarks/ included
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from benchmarks.machine import machine_info, machine_load, machine_peak, write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ('scoring', 'features', 'finetune', 'memory', 'network')
JOB_MODULE = {'scoring': 'eval', 'features': 'eval.features', 'finetune': 'eval.finetune', 'memory': 'eval.features'}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def training_forward_gflop(model_name: str, train: str, batch: int) -> float:
    """GFLOP of one forward of the fine-tuning batch (``train`` 'TxS' clips, a 2-class head); a step counts 3."""
    frames, crop = (int(v) for v in train.split('x'))
    return batch * forward_gflop(model_name, frames, crop, num_classes=2)

# Sizes of the full run and of --quick (each overridable by a flag of the same name).
FULL = dict(video='456x256', video_frames=250, views='3x10', score_geometry=None, network_clip=(32, 256),
            n_videos=(2, 6),
            features_geometry=None, train='32x224', train_rate=None, steps=(2, 6), batch=2,
            memory_video='340x256', memory_frames=(1000, 10000, 30000), memory_workers=(0, 1, 2), memory_stride=512,
            peak_seconds=1.0, peak_shapes=None)
QUICK = dict(video='112x64', video_frames=40, views='1x1', score_geometry=('8', '56', '64'), network_clip=(8, 56),
             n_videos=(1, 2),
             features_geometry=('8', '8', '80x64', '56'), train='32x32', train_rate=1, steps=(1, 2), batch=2,
             memory_video='112x64', memory_frames=(100, 300), memory_workers=(0, 1, 2), memory_stride=64,
             peak_seconds=0.25,
             peak_shapes=dict(gemms=((512, 512, 512),), convs=((1, 256, 256, 2, 14, 14),)))


# --------------------------------------------------------------------------------------------- memory

def _children(pid: int) -> List[int]:
    """The live children of ``pid`` (/proc/PID/task/*/children: no scan of every process)."""
    found: List[int] = []
    try:
        tasks = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f'/proc/{pid}/task/{tid}/children') as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def process_tree(root: int) -> List[int]:
    """``root`` and every live descendant of it."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(_children(pid))
    return tree


def pss_bytes(pid: int) -> int:
    """The process's proportional set size (shared pages split between their users); 0 once it is gone."""
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


PAGE_BYTES = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096


def rss_bytes(pid: int) -> int:
    """The process's resident set size from /proc/PID/statm (constant time; shared pages counted in full); 0 once
    it is gone."""
    try:
        with open(f'/proc/{pid}/statm') as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class TreePss:
    """Peak of the summed PSS of a process and all its descendants, sampled on a thread:
    ``with TreePss(proc.pid) as m: proc.wait()``, then ``m.peak_bytes``, ``m.samples`` (PSS reads),
    ``m.peak_processes`` and ``m.timeline`` ((seconds since the start, summed RSS) every ``interval``).

    PSS (smaps_rollup) makes the kernel walk every page of every process: for a job of ~1.5 GB and its compile
    workers, reading it every 0.5 s cost the sampler 0.7 of a core in system time (measured during a scoring run:
    a third of this 2-core machine, taken from the job it measures). So every ``interval`` only the RSS
    (statm, constant time) is read, and PSS only when the summed RSS passes the level it had at the last PSS read
    by ``RISE`` (the peak can only be higher then: PSS <= RSS, and a fall cannot make a peak), when a process
    joins or leaves the tree, and at least every ``refresh`` seconds."""

    RISE = 1.01

    def __init__(self, pid: int, interval: float = 0.5, refresh: float = 10.0):
        self.pid, self.interval, self.refresh = pid, interval, refresh
        self.peak_bytes, self.samples, self.peak_processes, self.most_processes = 0, 0, 0, 0
        self.timeline: List[Tuple[float, int]] = []
        self._began = time.perf_counter()
        self._read_at: Tuple[float, int, Tuple[int, ...]] = (-1e9, -1, ())     # time, RSS sum, tree at the last read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        tree = tuple(process_tree(self.pid))
        now = time.perf_counter() - self._began
        rss = sum(rss_bytes(p) for p in tree)
        self.timeline.append((now, rss))
        self.most_processes = max(self.most_processes, len(tree))
        last_t, last_rss, last_tree = self._read_at
        if not (rss > last_rss * self.RISE or tree != last_tree or now - last_t >= self.refresh):
            return
        total = sum(pss_bytes(p) for p in tree)
        self._read_at = (now, rss, tree)
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> 'TreePss':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2 ** 20

    def late_growth(self) -> Optional[float]:
        """Peak summed RSS of the run's second half over its first half's (by time): above 1 when memory still
        grows in the second half of the run. None with fewer than 4 samples."""
        if len(self.timeline) < 4:
            return None
        middle = self.timeline[-1][0] / 2
        first = max(b for t, b in self.timeline if t <= middle)
        second = max(b for t, b in self.timeline if t > middle)
        return second / first if first else None


# --------------------------------------------------------------------------------------------- jobs

@functools.lru_cache(maxsize=None)
def job_help(module: str) -> str:
    proc = subprocess.run([sys.executable, '-m', module, '--help'], cwd=REPO, capture_output=True, text=True)
    return proc.stdout


def accepts(module: str, flag: str) -> bool:
    """Whether ``python -m module --help`` lists ``flag`` (a whole flag, not a prefix of a longer one)."""
    return bool(flag) and re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', job_help(module)) is not None


def compile_statements(out: str) -> Dict[str, object]:
    """Every 'compile' key of the job's JSON outputs (summary.json, index.json, manifest.json, recipe.json, the
    first sidecar): {'file:key.path': value}."""
    found: Dict[str, object] = {}

    def walk(value, path: str, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == 'compile' and isinstance(v, dict):      # eval.kit.compiling's record: the decision, start
                    found[f'{where}:{path}compiled'] = v.get('compiled')
                    if v.get('start_s') is not None:
                        found[f'{where}:{path}start_s'] = v['start_s']
                    continue
                if 'compile' in str(k).lower() and not isinstance(v, (dict, list)):
                    found[f'{where}:{path}{k}'] = v
                walk(v, f'{path}{k}.', where)
    if not os.path.isdir(out):
        return found
    names = sorted(n for n in os.listdir(out) if n.endswith('.json'))
    known = [n for n in names if n in ('summary.json', 'index.json', 'training.json', 'manifest.json', 'recipe.json')]
    for name in known + [n for n in names if n not in known][:1]:
        try:
            with open(os.path.join(out, name)) as f:
                walk(json.load(f), '', name)
        except (OSError, ValueError):
            continue
    return found


def cpu_jiffies() -> Optional[Tuple[int, int]]:
    """(stolen, all) CPU time of the whole machine so far, in jiffies, from /proc/stat's first line: 'steal' is
    time the hypervisor gave this VM's virtual CPUs to another guest; None where there is no /proc/stat."""
    try:
        with open('/proc/stat') as f:
            fields = [int(v) for v in f.readline().split()[1:9]]    # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def steal_share(before: Optional[Tuple[int, int]], after: Optional[Tuple[int, int]]) -> Optional[float]:
    """The share of all CPU time between two cpu_jiffies() readings that the hypervisor took (0 on a machine of
    one's own; measured here: 2% in a quiet minute, 7.5% in one where the same forward pass ran 1.5x slower)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def run_job(command: List[str], out: str, log: str, timeout: float, interval: float = 0.5) -> dict:
    """One job command (cwd: the repository) with its tree's PSS sampled: wall seconds, peak PSS, and what its
    outputs say about compiling. A fresh inductor cache per run, so compiled runs compile alike."""
    cache = tempfile.mkdtemp(prefix='inductor-', dir=os.path.dirname(out))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, 'triton'))
    with open(log, 'w') as f:
        jiffies = cpu_jiffies()
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
        with TreePss(proc.pid, interval) as memory:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f'{" ".join(command[2:5])} ran past --job-timeout {timeout:.0f} s') from None
        seconds = time.perf_counter() - start
        stolen = steal_share(jiffies, cpu_jiffies())
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        with open(log) as f:
            raise RuntimeError(f'exit status {proc.returncode} of {" ".join(command[1:])}:\n{f.read()[-3000:]}')
    return {'command': ' '.join(['python'] + command[1:]), 'out': out, 'seconds': seconds, 'steal': stolen,
            'peak_pss_mb': memory.peak_mb,
            'pss_samples': memory.samples, 'processes_at_peak': memory.peak_processes,
            'most_processes': memory.most_processes, 'late_growth': memory.late_growth(),
            'job_says_compile': compile_statements(out)}


def job_start(run: dict) -> Optional[float]:
    """The compile start the job measured itself (eval.kit.compiling: its first pass less its later ones)."""
    starts = [v for k, v in run['job_says_compile'].items() if k.endswith('start_s')]
    return starts[0] if starts else None


def two_run_rate(t1: float, t2: float, n1: float, n2: float) -> Dict[str, float]:
    per = (t2 - t1) / (n2 - n1)
    return {'seconds_per_item': per, 'startup_s': t1 - n1 * per}


def work_seconds(run: dict) -> float:
    """A run's seconds less the compile start the job measured itself (job_start), where it did: what the
    difference of two runs is taken over. A cold compile of the same command varies by seconds between runs
    (run 8's scoring bf16: 14.1-17.0 s, its 6-video runs 2-3 s longer than its 2-video runs), and the difference of
    4 videos would count that as 0.5-0.7 s a video; taken out of each run, the start-up keeps it (startup_s is
    t(N1) - N1 x the rate, from the raw seconds)."""
    start = job_start(run)
    return run['seconds'] - (start if start is not None and start > 0 else 0.0)


# --------------------------------------------------------------------------------------------- data

def size_of(text: str) -> tuple:
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def write_video(path: str, frames: int, width: int, height: int, seed: int = 0, pool: int = 250) -> str:
    """An H.264 video of ``frames`` frames of eval.data.synthetic content, encoded as it is made: a pool of up to
    ``pool`` distinct frames repeated, so a 30k-frame video never sits in memory."""
    import av
    from eval.data.synthetic import synthetic_frames
    images = synthetic_frames(min(frames, pool), height, width, seed=seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=25, options={'preset': 'veryfast', 'crf': '18'})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(images[t % len(images)], format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_folder(folder: str, source: str, count: int) -> str:
    """``count`` links to ``source`` in ``folder``: scored as different videos, decoded from the page cache alike."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        os.symlink(source, os.path.join(folder, f'video{i:04d}.mp4'))
    return folder


def training_list(folder: str, source: str, clips: int, classes: int = 2) -> tuple:
    """A ``path label`` list of ``clips`` links to ``source`` over ``classes`` classes, and its classes file."""
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i in range(clips):
        os.symlink(source, os.path.join(folder, f'clip{i:04d}.mp4'))
        lines.append(f'clip{i:04d}.mp4 {i % classes}\n')
    with open(os.path.join(folder, 'list.txt'), 'w') as f:
        f.writelines(lines)
    with open(os.path.join(folder, 'classes.txt'), 'w') as f:
        f.writelines(f'class{c}\n' for c in range(classes))
    return os.path.join(folder, 'list.txt'), os.path.join(folder, 'classes.txt')


# --------------------------------------------------------------------------------------------- FLOPs

@functools.lru_cache(maxsize=None)
def forward_gflop(model_name: str, frames: int, crop: int, features: bool = False, num_classes: int = 0) -> float:
    """GFLOP (2 per multiply-add, fvcore's count x 2) of one (1, 3, frames, crop, crop) clip: the network with its
    global-pool head (training), or forward_features + the pooled pre-logits head (the features job)."""
    import zoo
    from eval.kit.flops import count_flops
    model = zoo.create_model(model_name, **({'num_classes': num_classes} if num_classes else {})).eval()
    if features:
        class Features(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        model = Features(model)
    return 2 * count_flops(model, frames, crop, fully_conv=False).flops_per_view / 1e9


def probe_peaks(sizes: dict, device: torch.device) -> Dict[str, dict]:
    """machine_peak per precision now: {precision: {dtype, gflops_per_s, best_probe, probes}}."""
    peaks = {}
    for name, dtype in DTYPES.items():
        pk = machine_peak(dtype, device, sizes['peak_seconds'], **(sizes['peak_shapes'] or {}))
        peaks[name] = {'dtype': pk.dtype, 'gflops_per_s': pk.gflops_per_s, 'best_probe': pk.best_probe,
                       'probes': pk.probes}
    return peaks


RATE_PARTS = ('scoring', 'features', 'finetune')    # the parts whose rows against_best_peak rescores
LATE_GROWTH_FLAT = 1.05   # a memory run still growing in its second half: its peak there over the first half's


# --------------------------------------------------------------------------------------------- the parts

class Bench:
    def __init__(self, args, sizes: dict, work: str, peaks: Dict[str, dict]):
        self.args, self.sizes, self.work, self.peaks = args, sizes, work, peaks
        self.device = args.device
        self.lines: List[str] = []
        self.runs: List[dict] = []
        self.compile_in = set(args.compile_in)
        self._videos: Dict[str, str] = {}
        self.peak_probes: List[dict] = [{'when': 'at the start', **{k: v['gflops_per_s'] for k, v in peaks.items()}}]
        self._all_peaks: List[Dict[str, dict]] = [peaks]
        self.job_rows: Dict[Tuple[str, str], dict] = {}     # (part, precision): its rate row

    def reprobe(self, when: str) -> None:
        """Probe the peak again (the machine drifts): the next rows' live fractions are of this probe."""
        jiffies = cpu_jiffies()
        self.peaks = probe_peaks(self.sizes, torch.device(self.device))
        stolen = steal_share(jiffies, cpu_jiffies())
        self._all_peaks.append(self.peaks)
        self.peak_probes.append({'when': when, **{k: v['gflops_per_s'] for k, v in self.peaks.items()},
                                 'steal': stolen})
        print(f'  (peak {when}: ' + ', '.join(f'{k} {v["gflops_per_s"]:.1f}' for k, v in self.peaks.items())
              + ('' if stolen is None else f'; steal {100 * stolen:.1f}%') + ')', flush=True)

    def best_peaks(self) -> Dict[str, dict]:
        return {k: max((p[k] for p in self._all_peaks), key=lambda v: v['gflops_per_s']) for k in DTYPES}

    def against_best_peak(self, report: dict) -> None:
        """Every job row's fraction against the run's best probe per precision (its live one kept as
        ``fraction_of_adjacent_peak``); the table of them printed; report['peak'] and ['peak_probes'] set."""
        best = self.best_peaks()
        report['peak'], report['peak_probes'] = best, self.peak_probes
        self.say('peak probes (GFLOP/s): ' + '; '.join(
            f'{p["when"]} ' + ' '.join(f'{k} {p[k]:.1f}' for k in DTYPES) for p in self.peak_probes))
        self.say(f'against the run\'s best probe (fp32 {best["fp32"]["gflops_per_s"]:.1f}, '
                 f'bf16 {best["bf16"]["gflops_per_s"]:.1f} GFLOP/s):')
        for part in RATE_PARTS:
            for precision, row in report['parts'].get(part, {}).items():
                if not (isinstance(row, dict) and 'fraction_of_peak' in row and precision in best):
                    continue
                peak = best[precision]['gflops_per_s']
                row.update(fraction_of_adjacent_peak=row['fraction_of_peak'],
                           adjacent_peak_gflops_per_s=row['peak_gflops_per_s'], peak_gflops_per_s=peak,
                           fraction_of_peak=row['gflops_per_s'] / peak)
                self.say(f'  {part:<9} {precision:<5} {row["gflops_per_s"]:9.1f} GFLOP/s = '
                         f'{100 * row["fraction_of_peak"]:5.1f}% of the best probe '
                         f'({100 * row["fraction_of_adjacent_peak"]:.1f}% of the probe before it)')

    def say(self, line: str = '') -> None:
        print(line, flush=True)
        self.lines.append(line)

    def video(self, geometry: str, frames: int) -> str:
        key = f'{geometry}-{frames}'
        if key not in self._videos:
            width, height = size_of(geometry)
            began = time.perf_counter()
            self._videos[key] = write_video(os.path.join(self.work, 'videos', f'{key}.mp4'), frames, width, height)
            print(f'  (wrote a {geometry}, {frames}-frame video in {time.perf_counter() - began:.1f} s)', flush=True)
        return self._videos[key]

    def flags(self, part: str, compiled: bool = True) -> List[str]:
        """The compile (or eager) flag for ``part``'s job, only where its --help lists it."""
        module = JOB_MODULE[part]
        if compiled and part in self.compile_in and accepts(module, self.args.compile_flag):
            return [self.args.compile_flag]
        if not compiled and accepts(module, self.args.eager_flag):
            return [self.args.eager_flag]
        return []

    def compile_note(self, part: str) -> dict:
        module = JOB_MODULE[part]
        return {'compile_flag': self.args.compile_flag if part in self.compile_in else None,
                'compile_flag_accepted': accepts(module, self.args.compile_flag),
                'eager_flag': self.args.eager_flag, 'eager_flag_accepted': accepts(module, self.args.eager_flag)}

    def run(self, part: str, label: str, command: List[str], out: str) -> dict:
        result = run_job(command, out, out + '.log', self.args.job_timeout)
        result.update(part=part, label=label)
        self.runs.append(result)
        said = ', '.join(f'{k}={v}' for k, v in result['job_says_compile'].items()) or 'no compile key'
        late = f'late growth {result["late_growth"]:.3f}  ' if part == 'memory' and result['late_growth'] else ''
        stolen = '' if result['steal'] is None else f'steal {100 * result["steal"]:4.1f}%  '
        print(f'  {part:<8} {label:<28} {result["seconds"]:8.1f} s  peak tree PSS {result["peak_pss_mb"]:7.0f} MB  '
              f'{stolen}{late}({said})', flush=True)
        return result

    def timed_runs(self, part: str, label: str, sizes: Sequence[int], command, out) -> Dict[int, dict]:
        """The two runs of a rate row, repeated --repeats times in turn (N1, N2, N1, N2, ...), each in a fresh
        output folder (a job resumes from a folder it finds), ``command(n, out)`` and ``out(n, repeat)`` giving
        them: per size the fastest run, with every run's seconds and steal under 'repeats'. Other work on a shared
        machine only ever adds time, so the fastest run of each size is its least disturbed (the peak probe is the
        best of its calls, too)."""
        runs: Dict[int, List[dict]] = {n: [] for n in sizes}
        for r in range(self.args.repeats):
            for n in sizes:
                folder = out(n, r)
                runs[n].append(self.run(part, label.format(n=n) + (f' #{r + 1}' if self.args.repeats > 1 else ''),
                                        command(n, folder), folder))
        best = {}
        for n, tries in runs.items():
            best[n] = dict(min(tries, key=work_seconds))
            best[n]['repeats'] = [{'seconds': t['seconds'], 'steal': t['steal'], 'job_compile_start_s': job_start(t)}
                                  for t in tries]
        return best

    def rate_row(self, part: str, precision: str, r1: dict, r2: dict, n1: float, n2: float, per: str,
                 gflop_per_item: float, extra: Optional[dict] = None) -> dict:
        raw = two_run_rate(r1['seconds'], r2['seconds'], n1, n2)
        seconds = two_run_rate(work_seconds(r1), work_seconds(r2), n1, n2)['seconds_per_item']
        gflops = gflop_per_item / seconds if seconds > 0 else float('nan')
        peak = self.peaks[precision]['gflops_per_s']
        row = {'part': part, 'precision': precision, 'per': per, 'n': [n1, n2],
               'seconds': [r1['seconds'], r2['seconds']], f'seconds_per_{per}': seconds,
               f'{per}s_per_s': 1 / seconds if seconds > 0 else float('nan'), 'startup_s': r1['seconds'] - n1 * seconds,
               # the plain difference, the compile starts left in (work_seconds)
               f'seconds_per_{per}_with_compile_noise': raw['seconds_per_item'],
               f'gflop_per_{per}': gflop_per_item, 'gflops_per_s': gflops, 'peak_gflops_per_s': peak,
               'fraction_of_peak': gflops / peak, 'peak_pss_mb': max(r1['peak_pss_mb'], r2['peak_pss_mb']),
               'steal': [r1['steal'], r2['steal']], 'repeats': [r1.get('repeats'), r2.get('repeats')],
               'job_says_compile': r2['job_says_compile'], **self.compile_note(part), **(extra or {}),
               'job_compile_start_s': [job_start(r1), job_start(r2)]}
        if not seconds > 0:
            row['warning'] = (f't(N2) <= t(N1): the runs\' start-up noise exceeds the work of {n2 - n1:g} more {per}s '
                              f'(--quick sizes, or a loaded machine); give larger N1,N2')
        self.job_rows[(part, precision)] = row
        starts = '/'.join('-' if v is None else f'{v:.1f}' for v in row['job_compile_start_s'])
        self.say(f'{part:<9} {precision:<5} {seconds:9.3f} s/{per:<8} {row["startup_s"]:8.1f} {gflop_per_item:10.1f} '
                 f'{gflops:9.1f} {100 * row["fraction_of_peak"]:7.1f}% {row["peak_pss_mb"]:8.0f}  {starts}'
                 + (f'  ({row["warning"]})' if 'warning' in row else ''))
        return row

    # ------------------------------------------------------------------------------ scoring
    def scoring(self) -> dict:
        a, s = self.args, self.sizes
        source = self.video(s['video'], s['video_frames'])
        n1, n2 = s['n_videos']
        geometry = []
        if s['score_geometry']:
            frames, crop, scale = s['score_geometry']
            geometry = ['--frames', frames, '--crop', crop, '--scale', scale]
        result: dict = {'video': f'{s["video"]}x{s["video_frames"]} frames', 'views': s['views']}

        def command(data: str, out: str, precision: str, compiled: bool) -> List[str]:
            return [sys.executable, '-m', 'eval', '--benchmark', 'unlabelled', '--data', data, '--views', s['views'],
                    '--model', a.model, '--random-weights', '--precision', precision, '--device', self.device,
                    '--no-progress', '--out', out, *geometry, *self.flags('scoring', compiled)]

        folders = {n: video_folder(os.path.join(self.work, f'score-data-{n}'), source, n) for n in (n1, n2)}
        for precision in a.precisions:
            runs = self.timed_runs('scoring', f'{precision} {{n}} videos', (n1, n2),
                                   lambda n, out: command(folders[n], out, precision, True),
                                   lambda n, r: os.path.join(self.work, f'score-{precision}-{n}-{r}'))
            with open(os.path.join(runs[n2]['out'], 'summary.json')) as f:
                summary = json.load(f)
            if summary['counts']['scored'] != n2:
                raise RuntimeError(f'scoring {precision}: {summary["counts"]["scored"]} of {n2} videos scored')
            flops = summary['flops']
            result[precision] = dict(runs=[runs[n1], runs[n2]], job_flops=flops)
            result[precision].update(self.rate_row('scoring', precision, runs[n1], runs[n2], n1, n2, 'video',
                                                   2 * flops['flops_per_video'] / 1e9,
                                                   {'flops_note': 'summary.json flops_per_video (fvcore) x 2'}))
        if 'fp32' in a.precisions and 'scoring' in self.compile_in and self.flags('scoring', True):
            eager = self.run('scoring', f'fp32 {n1} videos eager',
                             command(folders[n1], os.path.join(self.work, f'score-eager-{n1}'), 'fp32', False),
                             os.path.join(self.work, f'score-eager-{n1}'))
            fp32 = result['fp32']
            eager_startup = eager['seconds'] - n1 * fp32['seconds_per_video']
            result['compile_start'] = {
                'seconds': fp32['startup_s'] - eager_startup, 'startup_compiled_s': fp32['startup_s'],
                'startup_eager_s': eager_startup, 'eager_run': eager, 'eager_flags': self.flags('scoring', False),
                'note': 'start-up of the compiled fp32 runs - (the eager N1 run - N1 x the compiled seconds per video)'}
        else:
            result['compile_start'] = {'seconds': None, 'note': 'not measured: no compile flag on the scoring runs'}
        return result

    # ------------------------------------------------------------------------------ network
    def network(self) -> dict:
        """Scoring's network alone, as the job builds it (the kit's fast path, compiled by compiled_inference unless
        'network' is left out of --compile-in, the fully-convolutional head at 256 crops, the job's batch), and its
        stem convolution alone (the same oneDNN call, eager): where scoring's end-to-end figure stops, per
        precision."""
        from benchmarks.timing import best_seconds
        from eval.kit.compiling import CompileDecision, compiled_inference, network_flop
        from eval.kit.config import default_batch_size, fully_conv_head
        from eval.data.pixels import PixelNormalizer
        from eval.kit.loop import prepare_model
        from zoo import create_model
        from zoo.heap import keep_freed_memory
        keep_freed_memory()     # the jobs' heap (eval.kit.job.run_job(keep_heap=True)); the network part runs last
        a, (frames, crop) = self.args, self.sizes['network_clip']
        device = torch.device(self.device)
        model = create_model(a.model, pretrained=False).eval()
        kwargs = {'fully_conv': True} if fully_conv_head(getattr(model, 'pretrained_cfg', None), crop) else {}
        batch = default_batch_size(device)
        compiled = 'network' in self.compile_in
        x = torch.randn(batch, 3, frames, crop, crop, device=device)
        # the job's input: uint8 views, normalised by the network (in its graph when compiled)
        views = torch.randint(0, 256, (batch, frames, crop, crop, 3), dtype=torch.uint8, device=device)
        pixels = PixelNormalizer.from_cfg(getattr(model, 'pretrained_cfg', None))
        flop = batch * network_flop(model, (1, 3, frames, crop, crop), **kwargs)
        stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
        result: dict = {'clip': f'{frames}x{crop}', 'batch': batch, 'compiled': compiled,
                        'head': 'fully-convolutional' if kwargs else 'global', 'gflop_per_pass': flop / 1e9,
                        'stem': f'{type(stem).__name__} {stem.in_channels}->{stem.out_channels} kernel '
                                f'{tuple(stem.kernel_size)} stride {tuple(stem.stride)}'}
        for precision in a.precisions:
            dtype = DTYPES[precision]
            peak = self.peaks[precision]['gflops_per_s']
            decision = CompileDecision(compiled, 'bench', compiled)
            net = compiled_inference(prepare_model(model, device, precision), decision, device, batch,
                                     say=lambda line: None, pixels=pixels)
            seconds, _ = best_seconds(lambda: net(views, **kwargs), repeats=3, warmup=2, device=device)
            cl = torch.channels_last_3d
            w = stem.weight.detach().to(device=device, dtype=dtype).contiguous(memory_format=cl)
            xs = x.to(dtype).contiguous(memory_format=cl)

            def run_stem():
                with torch.inference_mode():
                    return torch.nn.functional.conv3d(xs, w, None, stem.stride, stem.padding)
            stem_s, out = best_seconds(run_stem, repeats=3, warmup=1, device=device)
            stem_flop = 2.0 * out.numel() * stem.in_channels * int(np.prod(stem.kernel_size))
            rest_s = max(seconds - stem_s, 1e-9)
            row = {'seconds_per_pass': seconds, 'gflops_per_s': flop / seconds / 1e9,
                   'fraction_of_peak': flop / seconds / 1e9 / peak, 'stem_flop_share': stem_flop / flop,
                   'stem_gflops_per_s': stem_flop / stem_s / 1e9,
                   'stem_fraction_of_peak': stem_flop / stem_s / 1e9 / peak,
                   'rest_fraction_of_peak': (flop - stem_flop) / rest_s / 1e9 / peak,
                   # the network's ceiling were everything but the stem at the peak
                   'ceiling_rest_at_peak': flop / (stem_s + (flop - stem_flop) / (peak * 1e9)) / 1e9 / peak}
            result[precision] = row
            how = 'compiled' if compiled else 'eager'
            self.say(f'network  {precision:<5} {a.model} {frames}x{crop} batch {batch}, {how}, alone: '
                     f'{row["gflops_per_s"]:.1f} GFLOP/s = {100 * row["fraction_of_peak"]:.1f}% of the peak; its stem '
                     f'({result["stem"]}) is {100 * row["stem_flop_share"]:.0f}% of the FLOPs at '
                     f'{100 * row["stem_fraction_of_peak"]:.0f}% of the peak, the rest at '
                     f'{100 * row["rest_fraction_of_peak"]:.0f}%; with the rest at 100% the network would reach '
                     f'{100 * row["ceiling_rest_at_peak"]:.0f}%')
            net = None               # the next precision compiles its own graph
            torch._dynamo.reset()
        result['training'] = self.training_alone()
        return result

    def training_alone(self) -> dict:
        """Fine-tuning's step without the job around it: the network as eval.finetune builds it (a new head of 2
        classes, the recipe's BatchNorm mode for the batch, SGD with its defaults), eager as the job trains on the
        CPU, on a random batch of the job's size and clip, best of 3 after a warm-up, per precision: the forward in
        training mode alone and the whole step (forward, backward, optimizer step), as fractions of the peak
        (3 forwards a step, as the finetune row counts). The job's step is compared with this one; their ratio is
        what the job adds (data, logging), the step's own fraction is the bound of the finetune row."""
        from benchmarks.timing import best_seconds
        from eval.finetune import recipe as rc
        from eval.kit.runtime import resolve_precision
        from zoo import create_model
        a, s = self.args, self.sizes
        frames, crop = (int(v) for v in s['train'].split('x'))
        batch, device = s['batch'], torch.device(self.device)
        bn = rc.resolve_bn_mode('auto', batch)
        forward_gflops = training_forward_gflop(a.model, s['train'], batch)
        result: dict = {'clip': s['train'], 'batch': batch, 'bn': bn, 'gflop_per_step': 3 * forward_gflops}
        x = torch.randn(batch, 3, frames, crop, crop, device=device)
        labels = torch.arange(batch, device=device) % 2
        for precision in a.precisions:
            torch.manual_seed(0)
            model = create_model(a.model, pretrained=False, num_classes=2, drop_rate=rc.DROPOUT).to(device)
            rc.set_trainable(model, bn, False)
            rc.set_train_mode(model, bn, False)
            optimizer = rc.make_optimizer(model, 0.01)
            autocast = resolve_precision(precision, device, training=True).autocast

            def forward() -> None:
                with autocast():
                    model(x)

            def step() -> None:
                with autocast():
                    logits = model(x)
                torch.nn.functional.cross_entropy(logits.float(), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            forward_s, _ = best_seconds(forward, repeats=3, warmup=1, device=device)
            step_s, _ = best_seconds(step, repeats=3, warmup=1, device=device)
            peak = self.peaks[precision]['gflops_per_s']
            backward_s = max(step_s - forward_s, 1e-9)
            row = {'forward_s': forward_s, 'step_s': step_s,
                   'forward_fraction_of_peak': forward_gflops / forward_s / peak,
                   'rest_of_step_fraction_of_peak': 2 * forward_gflops / backward_s / peak,
                   'gflops_per_s': 3 * forward_gflops / step_s, 'fraction_of_peak': 3 * forward_gflops / step_s / peak}
            job = self.job_rows.get(('finetune', precision))
            if job:
                row['job_seconds_per_step'] = job['seconds_per_step']
                row['job_median_step_s'] = job['job_median_step_s']
                row['job_over_alone'] = job['seconds_per_step'] / step_s
            result[precision] = row
            self.say(f'training {precision:<5} {a.model} {s["train"]} batch {batch} (BN {bn}), eager, alone: a step '
                     f'{step_s:.2f} s = {100 * row["fraction_of_peak"]:.1f}% of the peak; its forward in training mode '
                     f'at {100 * row["forward_fraction_of_peak"]:.0f}%, backward and optimizer step at '
                     f'{100 * row["rest_of_step_fraction_of_peak"]:.0f}% (as 2 forwards)'
                     + (f'; the job\'s step {job["seconds_per_step"]:.2f} s by the two runs (its own median '
                        f'{job["job_median_step_s"]:.2f} s) = {row["job_over_alone"]:.2f}x this' if job else ''))
            model = optimizer = None
        return result

    # ------------------------------------------------------------------------------ features
    def features(self) -> dict:
        a, s = self.args, self.sizes
        source = self.video(s['video'], s['video_frames'])
        n1, n2 = s['n_videos']
        settings, snippet, crop = [], 16, 224
        if s['features_geometry']:
            snip, stride, resize, crop_size = s['features_geometry']
            settings = ['--snippet', snip, '--stride', stride, '--resize', resize, '--crop-size', crop_size]
            snippet, crop = int(snip), int(crop_size)
        folders = {n: video_folder(os.path.join(self.work, f'feat-data-{n}'), source, n) for n in (n1, n2)}
        result: dict = {'video': f'{s["video"]}x{s["video_frames"]} frames', 'preset': 'i3d-r50-10crop',
                        'settings': settings}
        for precision in a.precisions:
            runs = self.timed_runs(
                'features', f'{precision} {{n}} videos', (n1, n2),
                lambda n, out: [sys.executable, '-m', 'eval.features', '--data', folders[n], '--out', out,
                                '--model', a.model, '--random-weights', '--precision', precision,
                                '--device', self.device, '--no-progress', *settings, *self.flags('features', True)],
                lambda n, r: os.path.join(self.work, f'feat-{precision}-{n}-{r}'))
            with open(os.path.join(runs[n2]['out'], 'index.json')) as f:
                index = json.load(f)
            videos = [v for v in index['videos'] if v.get('status') == 'extracted']
            if len(videos) != n2:
                raise RuntimeError(f'features {precision}: {len(videos)} of {n2} videos extracted')
            per_video = {v['snippets'] for v in videos}
            if len(per_video) != 1:
                raise RuntimeError(f'features {precision}: snippets per video differ: {sorted(per_video)}')
            snippets, crops = per_video.pop(), index['settings']['crops']
            gflop = crops * forward_gflop(a.model, snippet, crop, features=True)
            row = self.rate_row('features', precision, runs[n1], runs[n2], n1 * snippets, n2 * snippets, 'snippet',
                                gflop, {'snippets_per_video': snippets, 'crops': crops,
                                        'job_seconds': index['run']['seconds'],
                                        'flops_note': f'fvcore forward_features + pre-logits pool on 1x3x{snippet}x'
                                                      f'{crop}x{crop}, x {crops} crops x 2'})
            row['seconds_per_video'] = row['seconds_per_snippet'] * snippets
            result[precision] = dict(row, runs=[runs[n1], runs[n2]])
        return result

    # ------------------------------------------------------------------------------ finetune
    def finetune(self) -> dict:
        a, s = self.args, self.sizes
        source = self.video(s['video'], s['video_frames'])
        frames, crop = (int(v) for v in s['train'].split('x'))
        batch = s['batch']
        s1, s2 = s['steps']
        clips = [['--frames', str(frames), '--crop', str(crop)] + (['--rate', str(s['train_rate'])]
                                                                     if s['train_rate'] else [])][0]
        lists = {n: training_list(os.path.join(self.work, f'train-data-{n}'), source, n * batch) for n in (s1, s2)}
        gflop = 3 * training_forward_gflop(a.model, s['train'], batch)
        result: dict = {'size': s['train'], 'batch': batch, 'steps': [s1, s2]}
        for precision in a.precisions:
            runs = self.timed_runs(
                'finetune', f'{precision} {{n}} steps', (s1, s2),
                lambda n, out: [sys.executable, '-m', 'eval.finetune', '--model', a.model, '--data', lists[n][0],
                                '--classes', lists[n][1], '--out', out, '--epochs', '1', '--batch-size', str(batch),
                                '--precision', precision, '--device', self.device, '--no-progress', *clips,
                                *self.flags('finetune', True)],
                lambda n, r: os.path.join(self.work, f'train-{precision}-{n}-{r}'))
            job_steps = step_seconds(os.path.join(runs[s2]['out'], 'metrics.csv'))
            if len(job_steps) != s2:
                raise RuntimeError(f'finetune {precision}: {len(job_steps)} steps logged, expected {s2}')
            row = self.rate_row('finetune', precision, runs[s1], runs[s2], s1, s2, 'step', gflop,
                                {'job_step_seconds': job_steps,
                                 'job_median_step_s': float(np.median(job_steps[1:] or job_steps)),
                                 'flops_note': f'3 x the forward of {batch} clips of {s["train"]} (fvcore x 2)'})
            result[precision] = dict(row, runs=[runs[s1], runs[s2]])
        return result

    # ------------------------------------------------------------------------------ memory
    def memory(self) -> dict:
        a, s = self.args, self.sizes
        stride = str(s['memory_stride'])
        result: dict = {'video': s['memory_video'], 'stride': s['memory_stride'], 'crops': 1, 'runs': [],
                        'note': f'eval.features --crops 1 --stride {stride}: every frame decoded, few snippets '
                                f'through the network; peak summed PSS of the job\'s process tree'}
        peaks: Dict[int, Dict[int, float]] = {}
        for frames in s['memory_frames']:
            source = self.video(s['memory_video'], frames)
            data = os.path.join(self.work, f'mem-data-{frames}')
            video_folder(data, source, 1)
            for workers in s['memory_workers']:
                out = os.path.join(self.work, f'mem-{frames}-{workers}')
                r = self.run('memory', f'{frames} frames, {workers} workers',
                             [sys.executable, '-m', 'eval.features', '--data', data, '--out', out, '--model', a.model,
                              '--random-weights', '--crops', '1', '--stride', stride, '--workers', str(workers),
                              '--device', self.device, '--no-progress', *self.flags('memory', True)], out)
                r.update(frames=frames, workers=workers)
                result['runs'].append(r)
                peaks.setdefault(workers, {})[frames] = r['peak_pss_mb']
        longer = s['memory_frames'][1:] or s['memory_frames']     # the shortest run ends before the plateau
        late: Dict[int, Optional[float]] = {}
        for r in result['runs']:
            if r['frames'] == s['memory_frames'][-1]:
                late[r['workers']] = r['late_growth']
        self.say(f'{"workers":>7} ' + ' '.join(f'{f:>9}f' for f in s['memory_frames'])
                 + f' {"max/min":>8} {"without " + str(s["memory_frames"][0]) + "f":>14} {"late growth":>12}')
        by_workers = {}
        for workers, row in peaks.items():
            values, beyond = list(row.values()), [row[f] for f in longer]
            by_workers[workers] = {'peak_pss_mb_by_frames': row, 'max_over_min': max(values) / min(values),
                                   'max_over_min_beyond_shortest': max(beyond) / min(beyond),
                                   'late_growth_longest': late.get(workers)}
            growth = late.get(workers)
            self.say(f'{workers:>7} ' + ' '.join(f'{row[f]:8.0f}MB' for f in s['memory_frames'])
                     + f' {max(values) / min(values):8.2f} {max(beyond) / min(beyond):14.2f} '
                     + (f'{growth:12.3f}' if growth is not None else f'{"-":>12}'))
        result['by_workers'] = by_workers
        longest = s['memory_frames'][-1]
        if 0 in peaks and 1 in peaks:
            result['worker_cost_mb'] = {f: peaks[1][f] - peaks[0][f] for f in s['memory_frames']}
            self.say(f'one decode worker costs {peaks[1][longest] - peaks[0][longest]:.0f} MB at {longest} frames '
                     f'(peak with --workers 1 - with 0)')
        flat = all(w['max_over_min_beyond_shortest'] < self.args.flat_ratio and
                   (w['late_growth_longest'] is None or w['late_growth_longest'] < LATE_GROWTH_FLAT)
                   for w in by_workers.values())
        result['flat_in_length'] = flat
        self.say(f'memory {"flat" if flat else "NOT flat"} in video length: for every worker count the peaks from '
                 f'{longer[0]} frames on within {self.args.flat_ratio}x (the {s["memory_frames"][0]}-frame run ends '
                 f'before the heap levels off) and the {longest}-frame run\'s peak in its second half within '
                 f'{LATE_GROWTH_FLAT}x of its first half\'s; stride {stride}, so the network sees few snippets while '
                 f'every frame is decoded')
        return result


def step_seconds(metrics_csv: str) -> List[float]:
    import csv
    with open(metrics_csv, newline='') as f:
        return [float(r['seconds']) for r in csv.DictReader(f) if r['kind'] == 'step']


# --------------------------------------------------------------------------------------------- main

def parse_pair(text: str) -> tuple:
    return tuple(int(v) for v in text.split(','))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', default=','.join(PARTS), help=f'comma-separated parts (default: {",".join(PARTS)})')
    p.add_argument('--quick', action='store_true',
                   help='smoke-sized: 112x64 40-frame videos, 1 and 2 of them, 1x1 views at 8x56, features at '
                        '8x56, fine-tuning at 32x32 for 1 and 2 steps, memory at 100 / 300 frames, tiny peak probes, '
                        'and the compile flag on the scoring runs only')
    p.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:N: given to every job')
    p.add_argument('--model', default='i3d_r50', help='the zoo model of every job (default i3d_r50)')
    p.add_argument('--precisions', default='fp32,bf16', help='comma-separated (default fp32,bf16)')
    p.add_argument('--tag', help='outputs benchmarks/jobs-<tag>.txt and .json (default cpu-2core-amd; with --quick '
                                 'quick-<device type>, so a smoke run never overwrites a real one)')
    p.add_argument('--out-dir', default=os.path.join(REPO, 'benchmarks'), help='where jobs-<tag>.* go')
    p.add_argument('--compile-flag', default='--compile',
                   help='the flag that makes a job compile (default --compile; given where the job\'s --help lists it)')
    p.add_argument('--eager-flag', default='--no-compile',
                   help='the flag of the eager scoring run (default --no-compile; no flag when the job lacks it)')
    p.add_argument('--compile-in', help=f'comma-separated parts whose jobs get the compile flag, or none '
                                        f'(default: all; with --quick: scoring)')
    sizes = p.add_argument_group('sizes (default: the full run\'s, or --quick\'s)')
    sizes.add_argument('--video', help='WxH of the scoring / features / fine-tuning videos (456x256)')
    sizes.add_argument('--video-frames', type=int, help='their frames (250)')
    sizes.add_argument('--views', help='scoring views SxT (3x10)')
    sizes.add_argument('--n-videos', type=parse_pair, help='N1,N2 videos of the two runs (2,6)')
    sizes.add_argument('--train', help='fine-tuning TxS clips (32x224)')
    sizes.add_argument('--steps', type=parse_pair, help='S1,S2 fine-tuning steps of the two runs (2,6)')
    sizes.add_argument('--batch', type=int, help='fine-tuning global batch (2)')
    sizes.add_argument('--memory-video', help='WxH of the memory videos (340x256)')
    sizes.add_argument('--memory-frames', type=lambda t: tuple(int(v) for v in t.split(',')),
                       help='frames of the memory videos (1000,10000,30000)')
    sizes.add_argument('--memory-workers', type=lambda t: tuple(int(v) for v in t.split(',')),
                       help='--workers of the memory runs (0,1,2)')
    sizes.add_argument('--memory-stride', type=int, help='--stride of the memory runs (512: the network a small part)')
    sizes.add_argument('--peak-seconds', type=float, help='seconds per peak probe (1)')
    p.add_argument('--flat-ratio', type=float, default=1.15, help='max / min of a worker count\'s peaks from the second length on that still counts as flat (1.15)')
    p.add_argument('--repeats', type=int,
                   help='runs of each size of a rate row, in turn; the fastest of each is used (default 2; --quick 1)')
    p.add_argument('--job-timeout', type=float, default=3600.0, help='seconds one job run may take (3600)')
    p.add_argument('--keep-work', action='store_true', help='keep the videos, the jobs\' outputs and logs')
    args = p.parse_args(argv)
    only = [x for x in args.only.split(',') if x]
    unknown = set(only) - set(PARTS)
    if unknown:
        p.error(f'--only: unknown part(s) {", ".join(sorted(unknown))}; choose from {", ".join(PARTS)}')
    args.precisions = [x for x in args.precisions.split(',') if x]
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    if args.repeats < 1:
        p.error(f'--repeats must be at least 1, got {args.repeats}')
    compile_in = args.compile_in if args.compile_in is not None else ('scoring' if args.quick else ','.join(PARTS))
    args.compile_in = [] if compile_in == 'none' else [x for x in compile_in.split(',') if x]
    s = dict(QUICK if args.quick else FULL)
    for key in ('video', 'video_frames', 'views', 'n_videos', 'train', 'steps', 'batch', 'memory_video',
                'memory_frames', 'memory_workers', 'memory_stride', 'peak_seconds'):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    device = torch.device(args.device)
    args.tag = args.tag or (f'quick-{device.type}' if args.quick else 'cpu-2core-amd')

    load_before = machine_load()
    info = machine_info(device)
    peaks = probe_peaks(s, device)
    work = tempfile.mkdtemp(prefix='bench-jobs-')
    bench = Bench(args, s, work, peaks)
    bench.say(f'# python benchmarks/bench_jobs.py {" ".join(argv if argv is not None else sys.argv[1:])}')
    bench.say(f'machine: {info.get("gpu") or info.get("cpu")}, {os.cpu_count()} CPUs, {info["threads"]} torch threads, '
              f'torch {torch.__version__}, device {args.device}; load before {load_before["loadavg_1_5_15"]}')
    bench.say('peak at the start: ' + ', '.join(f'{k} {v["gflops_per_s"]:.1f} GFLOP/s ({v["best_probe"]})'
                                   for k, v in peaks.items()))
    bench.say(f'model {args.model}, random weights; compile flag {args.compile_flag!r} in '
              f'{",".join(args.compile_in) or "none"}; eager flag {args.eager_flag!r} '
              f'({"listed" if accepts("eval", args.eager_flag) else "not listed: eager = no flag"} by python -m eval)')
    bench.say(f'{"job":<9} {"prec":<5} {"seconds per":>18} {"start-up":>8} {"GFLOP/item":>10} {"GFLOP/s":>9} '
              f'{"of peak":>8} {"peak MB":>8}  compile start N1/N2 (the job\'s own, s)')
    report = {'format': 'bench_jobs/1', 'machine': info, 'torch': torch.__version__, 'device': args.device,
              'model': args.model, 'quick': args.quick, 'sizes': {k: v for k, v in s.items() if k != 'peak_shapes'},
              'precisions': args.precisions, 'compile_flag': args.compile_flag, 'eager_flag': args.eager_flag,
              'compile_in': args.compile_in, 'peak': peaks, 'parts': {}, 'errors': {}}
    began = time.perf_counter()
    try:
        for part in PARTS:
            if part not in only:
                continue
            bench.reprobe(f'before {part}')
            try:
                report['parts'][part] = getattr(bench, part)()
            except Exception as e:  # noqa: BLE001  (recorded; the other parts still run; exit status 1)
                report['errors'][part] = f'{type(e).__name__}: {e}'[-4000:]
                bench.say(f'{part}: FAILED: {type(e).__name__}: {str(e)[-800:]}')
    finally:
        if args.keep_work:
            report['work'] = work
        else:
            shutil.rmtree(work, ignore_errors=True)
    bench.reprobe('at the end')
    bench.against_best_peak(report)
    compile_start = report['parts'].get('scoring', {}).get('compile_start', {})
    if compile_start.get('seconds') is not None:
        bench.say(f'compile start (scoring fp32): {compile_start["seconds"]:.1f} s = start-up compiled '
                  f'{compile_start["startup_compiled_s"]:.1f} s - eager {compile_start["startup_eager_s"]:.1f} s')
    said: Dict[str, List[str]] = {}
    for r in bench.runs:     # per part and compile flag, the distinct statements of its runs' outputs
        words = ', '.join(f'{k}={v}' for k, v in r['job_says_compile'].items()) or 'no compile key in its outputs'
        flags = [f for f in (args.compile_flag, args.eager_flag) if f and f in r['command'].split()]
        key = f'{r["part"]} ({" ".join(flags) or "no compile flag"})'
        said.setdefault(key, [])
        if words not in said[key]:
            said[key].append(words)
    report['job_says_compile'] = said
    bench.say('the jobs\' own word on compiling:')
    for key, words in said.items():
        bench.say(f'  {key}: {" | ".join(words)}')
    report['runs'] = bench.runs
    report['elapsed_s'] = time.perf_counter() - began
    bench.say(f'{len(bench.runs)} job runs in {report["elapsed_s"]:.0f} s')
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f'jobs-{args.tag}')
    write_report(stem + '.json', report, load_before)
    bench.say(f'load after {report["load_after"]["loadavg_1_5_15"]}')
    with open(stem + '.txt', 'w', encoding='utf-8') as f:
        f.write('\n'.join(bench.lines) + '\n')
    print(f'wrote {stem}.txt')
    return 1 if report['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
