"""Whether a job runs its network through torch.compile: one rule for scoring, features, FVD and fine-tuning.

    decision = decide_compile(args.compile, device, precision, planned_flop)   # --compile / --no-compile / None
    net = compiled_inference(eager_net, decision, batch_size, console.say)    # the fast path, or it compiled
    net = compiled_inference(eager_net, decision, batch_size, console.say, pixels=PixelNormalizer(...))  # uint8 in

The rule (``decide_compile``): compiled when the run plans enough network work to repay the compile start,
eager below it; ``--compile`` / ``--no-compile`` override. The work is counted in FLOPs on the meta device
(``network_flop``: no computation, a fraction of a second) and turned into the seconds the eager network would
take at a conservative rate per CPU thread (``EAGER_FLOP_PER_S``); the threshold (``REPAY_SECONDS``) is about
three times the compile start it has to repay. Measured on a 2-core AMD EPYC (torch 2.15, i3d_r50; issue 23,
benchmarks/bench_network.py, benchmarks/jobs-*.txt): the compile start is 5-17 s (the first shape; the inductor
cache makes a second run start faster) and compiled fp32 runs 1.24-1.40x faster than the eager fast path, so a
run repays the start after 20-70 s of eager network time (scoring i3d_r50 3x10 end to end: 13-21 s of start,
benchmarks/jobs-cpu-2core-amd*.txt). The embedded demo (2 clips, 3x10 views, ~5 TFLOP: ~30 s eager) stays eager; a
Kinetics validation run compiles. Training on the CPU stays eager unless asked (``TRAINING_CPU_REASON``: measured no
faster compiled); on CUDA the same rule as inference.

Where the machine cannot compile (no C++ compiler for the CPU, no Triton for CUDA, another device) the job says so
in one line and runs the eager fast path; if compiling fails at run time the network falls back to the eager
fast path with one line, and the job goes on. Shapes are fixed: ``compiled_inference`` pads a smaller last batch
to the run's batch size (``dynamic=False``: one graph), so no video triggers a recompile. The inductor cache lives
beside the zoo's weight cache (``inductor_cache_dir``), so a second run on the machine starts in seconds.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

# Eager fast-path rate assumed per CPU thread (FLOP/s, 2 per multiply-add), low on purpose: measured 70-80 GFLOP/s
# per thread in fp32 and about twice that in bf16 on the 2-core AMD EPYC (68-74% of its 210-226 GFLOP/s fp32
# peak). On CUDA a single rate per GPU (no measurement here: an H200's eager bf16/fp32 order of magnitude).
EAGER_FLOP_PER_S = {('cpu', 'fp32'): 70e9, ('cpu', 'bf16'): 140e9, ('cpu', 'fp16'): 70e9,
                    ('cuda', 'fp32'): 40e12, ('cuda', 'bf16'): 150e12, ('cuda', 'fp16'): 150e12}
# Planned eager network seconds above which the compile start is repaid about three times over: CPU start 5-17 s
# and 20-30% saved per pass (measured above); CUDA start 30-90 s for inductor's default mode (not measured here:
# no GPU was lent; the device check script times it).
REPAY_SECONDS = {'cpu': 120.0, 'cuda': 900.0}
CUDA_MODE = 'default'     # 'max-autotune' costs minutes of start; not measured on a GPU yet


@dataclass(frozen=True)
class CompileDecision:
    """Whether the network is compiled, and the one line that says why (printed and recorded)."""
    compiled: bool
    reason: str
    requested: Optional[bool] = None          # --compile True, --no-compile False, the rule None
    planned_flop: Optional[float] = None

    def record(self) -> dict:
        return {'compiled': self.compiled, 'reason': self.reason,
                'requested': {True: '--compile', False: '--no-compile', None: 'auto'}[self.requested],
                'planned_tflop': None if self.planned_flop is None else round(self.planned_flop / 1e12, 3)}

    def line(self) -> str:
        return f'compile  {"yes" if self.compiled else "no"}: {self.reason}'


def compiler_problem(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run on ``device`` here, or None. Checked without compiling anything: the CPU
    backend needs a C++ compiler (inductor's search: $CXX, else g++), CUDA needs Triton."""
    device = torch.device(device)
    if device.type == 'cpu':
        import torch._inductor.config as inductor_config
        names = inductor_config.cpp.cxx if isinstance(inductor_config.cpp.cxx, (list, tuple)) \
            else (inductor_config.cpp.cxx,)
        names = [n for n in names if n]
        if not any(shutil.which(n) for n in names):
            return (f'torch.compile needs a C++ compiler for the CPU and none was found ({" or ".join(names)} '
                    'on PATH; set $CXX to one)')
        return None
    if device.type == 'cuda':
        try:
            import triton  # noqa: F401
        except ImportError:
            return 'torch.compile needs Triton on CUDA and it is not installed'
        return None
    return f'torch.compile is not used on {device.type}'


def inductor_cache_dir() -> str:
    """The inductor (and Triton) cache: $TORCHINDUCTOR_CACHE_DIR when set, else ``inductor/`` in the zoo's
    cache (converters.file_io.cache_root), beside the weights, so a second run reuses compiled kernels."""
    from converters.file_io import cache_root
    path = os.environ.get('TORCHINDUCTOR_CACHE_DIR') or str(cache_root() / 'inductor')
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = path
    os.environ.setdefault('TRITON_CACHE_DIR', os.path.join(path, 'triton'))
    return path


def network_flop(model: torch.nn.Module, input_shape: Tuple[int, ...], **kwargs) -> Optional[float]:
    """FLOPs (2 per multiply-add) of one forward pass of ``model`` on an input of ``input_shape``, counted on the
    meta device (nothing computed); None when the model cannot run there."""
    from torch.utils.flop_counter import FlopCounterMode
    try:
        meta = copy.deepcopy(model).to('meta')
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(torch.empty(input_shape, device='meta'), **kwargs)
        return float(counter.get_total_flops())
    except Exception:          # a model the meta device cannot run: the work stays unknown
        return None


def eager_seconds(planned_flop: float, device: torch.device, precision: str) -> float:
    """The eager fast path's time for ``planned_flop`` by the rate table (CPU: per thread)."""
    device = torch.device(device)
    rate = EAGER_FLOP_PER_S.get((device.type, precision), EAGER_FLOP_PER_S.get((device.type, 'fp32'), 70e9))
    if device.type == 'cpu':
        rate *= max(1, torch.get_num_threads())
    return planned_flop / rate


def flop_to_repay(device: torch.device, precision: str = 'fp32') -> float:
    """The planned FLOPs at which ``decide_compile`` starts compiling (a caller can stop counting there)."""
    device = torch.device(device)
    return REPAY_SECONDS.get(device.type, float('inf')) * eager_seconds(1.0, device, precision) ** -1


def compile_record(net: torch.nn.Module, decision: CompileDecision) -> dict:
    """What a per-video output records: whether its network ran compiled (a CompiledNetwork that fell back to
    eager says so) and how that was asked for; the run's planned work and reason go in the run's summary, so
    that a video's record does not depend on how the run was split into ranks."""
    record = {'compiled': decision.compiled, 'requested': decision.record()['requested']}
    failed = getattr(net, 'failed', None)
    if decision.compiled and failed:
        record.update(compiled=False, fallback=f'compiling failed at run time ({failed}); ran the eager fast path')
    return record


def compile_summary(net: torch.nn.Module, decision: CompileDecision) -> dict:
    """What a run's summary records: the decision, whether it held (compile_record) and the start it cost."""
    record = dict(decision.record(), **compile_record(net, decision))
    start = getattr(net, 'start_seconds', None)
    record['start_s'] = start() if start else None
    return record


# Training on the CPU is not compiled by default: measured on the 2-core AMD EPYC (2026-12-03, eval.finetune, i3d_r50
# 32x224, batch 2, 8 steps, in-process decoding) a compiled step took 2.6-3.5 s in fp32 against eager's 2.5-2.6 s and
# 1.65-1.8 s in bf16 against eager's 1.55-1.9 s, after 53-71 s of compiling forward and backward: oneDNN's
# backward convolutions are the same kernels either way, and there is nothing left to fuse that pays.
TRAINING_CPU_REASON = ('training on the CPU: a compiled step measured no faster than eager (i3d_r50 32x224: fp32 '
                       '2.6-3.5 vs 2.5 s, bf16 1.7 vs 1.7 s) after about a minute of compiling (--compile to '
                       'compile anyway)')


def decide_compile(requested: Optional[bool], device: torch.device, precision: str = 'fp32',
                   planned_flop: Optional[float] = None, unsupported: Optional[str] = None,
                   plain_model: bool = False, training: bool = False) -> CompileDecision:
    """The compile policy. ``requested``: --compile (True) / --no-compile (False) / None (the rule);
    ``planned_flop``: the network work this rank plans (None: unknown, stays eager); ``unsupported``: why this
    job's network cannot be compiled (e.g. a layer read by a hook), or None; ``plain_model``: --no-fast-path asked
    for the plain eager model, compiled only when --compile asks too; ``training``: a training step (on the CPU
    eager unless --compile: TRAINING_CPU_REASON)."""
    device = torch.device(device)
    if requested is False:
        return CompileDecision(False, '--no-compile', requested, planned_flop)
    if plain_model and requested is None:
        return CompileDecision(False, '--no-fast-path runs the plain eager model (--compile compiles it)', requested,
                               planned_flop)
    problem = unsupported or compiler_problem(device)
    if problem:
        return CompileDecision(False, f'{problem}; running the eager fast path', requested, planned_flop)
    if requested:
        return CompileDecision(True, '--compile', requested, planned_flop)
    if training and device.type == 'cpu':
        return CompileDecision(False, TRAINING_CPU_REASON, requested, planned_flop)
    if planned_flop is None:
        return CompileDecision(False, 'the planned work is unknown (--compile to compile anyway)', requested)
    seconds, repay = eager_seconds(planned_flop, device, precision), REPAY_SECONDS.get(device.type)
    if repay is None or seconds < repay:
        return CompileDecision(False, f'{planned_flop / 1e12:,.1f} TFLOP planned, about {seconds:,.0f} s of eager '
                                      f'network time: too little to repay the compile start (--compile to '
                                      f'compile anyway)', requested, planned_flop)
    return CompileDecision(True, f'{planned_flop / 1e12:,.1f} TFLOP planned, about {seconds:,.0f} s of eager '
                                 f'network time (--no-compile for the eager fast path)', requested, planned_flop)


def compile_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile`` as every job calls it: one graph per shape (dynamic=False; jobs keep shapes fixed), the
    cache beside the zoo's, CUDA's mode from ``CUDA_MODE``."""
    inductor_cache_dir()
    import torch._inductor.config as inductor_config
    # Random ops (training's dropout) draw from torch's generator as eager does, not inductor's own: a compiled
    # step draws the masks the eager step would, so compiling changes rounding only (and a resumed run that
    # decides otherwise continues the same sequence). Dropout acts on the pooled features: no measurable cost.
    inductor_config.fallback_random = True
    mode = CUDA_MODE if torch.device(device).type == 'cuda' and CUDA_MODE != 'default' else None
    return torch.compile(module, dynamic=False, mode=mode)


class CompiledNetwork(torch.nn.Module):
    """A compiled network of a fixed batch size with its eager twin: a smaller batch is padded (its last item
    repeated) and the padding's outputs dropped, so one graph serves every pass; if compiling or running the
    compiled graph fails, the eager twin takes over for the rest of the run, with one line said."""

    def __init__(self, eager: torch.nn.Module, compiled: torch.nn.Module, batch_size: Optional[int],
                 say: Callable[[str], None] = print):
        super().__init__()
        self.eager, self.compiled_net, self.batch_size, self.say = eager, compiled, batch_size, say
        self.failed: Optional[str] = None
        self.pretrained_cfg = getattr(eager, 'pretrained_cfg', None)
        self.first_pass_s: Optional[float] = None      # compiling + one pass
        self.later_passes, self.later_s = 0, 0.0

    def start_seconds(self) -> Optional[float]:
        """The compile start this run paid: the first pass less the mean of the later ones (None before two)."""
        if self.first_pass_s is None or not self.later_passes:
            return None
        return round(self.first_pass_s - self.later_s / self.later_passes, 2)

    @property
    def compiled(self) -> bool:
        return self.failed is None

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(x, **kwargs)
        n = x.shape[0]
        if self.batch_size and n < self.batch_size:
            x = torch.cat([x, x[-1:].expand(self.batch_size - n, *x.shape[1:])])
        started = time.perf_counter()
        try:
            out = self.compiled_net(x, **kwargs)
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
        except Exception as e:     # inductor's own errors vary by version: any failure falls back, once
            self.failed = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
            self.say(f'compile  failed at run time ({self.failed}); running the eager fast path from here on')
            return self.eager(x[:n], **kwargs)
        seconds = time.perf_counter() - started
        if self.first_pass_s is None:
            self.first_pass_s = seconds
        else:
            self.later_passes, self.later_s = self.later_passes + 1, self.later_s + seconds
        return out[:n]


class PixelInput(torch.nn.Module):
    """uint8 views (B, T, H, W, 3) in, the network's output out: the pixel normalisation (eval.data.pixels) and the
    network as one module, so that a compiled network takes uint8 and inductor fuses the normalisation (permute,
    float, subtract, scale, a reduced precision's cast) into one pass over the pixels, where eager makes three or
    four. The same values: measured bit-identical to normalising first (i3d_r50 32x256, fp32 and bf16), and a pass of
    2 views 5-11% faster in bf16, 2-10% in fp32 (the 2-core AMD EPYC, issue 23)."""

    def __init__(self, pixels: Callable[[torch.Tensor], torch.Tensor], net: torch.nn.Module):
        super().__init__()
        self.pixels, self.net = pixels, net
        self.pretrained_cfg = getattr(net, 'pretrained_cfg', None)

    def forward(self, views: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.net(self.pixels(views), **kwargs)


def compiled_inference(eager: torch.nn.Module, decision: CompileDecision, device: torch.device,
                       batch_size: Optional[int], say: Callable[[str], None] = print,
                       pixels: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.nn.Module:
    """The network a job calls: ``eager`` itself, or (decision.compiled) a CompiledNetwork over it. An
    InferenceModel (zoo.inference) compiles its inner network, so its float32 output stays outside the graph.
    ``pixels`` (a PixelNormalizer): the network takes the uint8 views (B, T, H, W, 3) and normalises them itself,
    inside the compiled graph when compiled (PixelInput)."""
    from zoo.inference import InferenceModel
    net = eager if pixels is None else PixelInput(pixels, eager)
    if not decision.compiled:
        return net
    if isinstance(eager, InferenceModel):
        inner = eager.net if pixels is None else PixelInput(pixels, eager.net)
        # uint8 views are not (N, C, T, H, W): their channels_last form comes from the normalisation's permute
        compiled = InferenceModel(compile_module(inner, device), precision=eager.precision,
                                  channels_last=eager.channels_last and pixels is None, compiled=True,
                                  pretrained_cfg=eager.pretrained_cfg)
    else:
        compiled = compile_module(net, device)
    return CompiledNetwork(net, compiled, batch_size, say)
