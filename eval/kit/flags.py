"""The flags every job of the kit shares: which model and weights, and where and how a job over many videos runs."""
from __future__ import annotations

import argparse

from eval.kit.config import DEFAULT_MAX_FAILED
from eval.kit.distributed import DEFAULT_TIMEOUT_S
from eval.kit.runtime import PRECISION_NAMES

TF32_HELP = ('on CUDA, let float32 convolutions and matmuls use TF32 (faster on Ampere and later GPUs, ~1e-3 '
             'relative error); without it fp32 computes in full float32 (bf16/fp16 allow TF32 anyway). '
             'No effect on the CPU')


WORKERS_HELP = ('DataLoader decode processes per rank (default, eval.kit.config.default_workers: on a GPU its CPUs - 1, '
                'at most 4; on the CPU 0 = in-process below 8 CPUs per rank, where a worker only takes cores from '
                'the network)')


def add_model_flags(p: argparse.ArgumentParser,
                    model_help: str = 'a name from zoo.list_models() (default: i3d_r50; demo: see eval.data.demo)') -> None:
    p.add_argument('--model', help=model_help)
    w = p.add_mutually_exclusive_group()
    w.add_argument('--checkpoint', help='a zoo .pth/.safetensors state dict instead of the pretrained weights')
    w.add_argument('--weights-file', help='a local copy of the source checkpoint (e.g. the Caffe2 .pkl)')
    w.add_argument('--random-weights', action='store_true', help='run untrained (pipeline check only)')
    p.add_argument('--seed', type=int, default=0, help='seed of the initialisation with --random-weights (default 0)')


def add_execution_flags(p: argparse.ArgumentParser) -> None:
    """Where and how a job over many videos runs, how it treats failures: every engine job has these."""
    p.add_argument('--workers', type=int, help=WORKERS_HELP)
    p.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda when present; under torchrun cuda:LOCAL_RANK)')
    p.add_argument('--no-fast-path', action='store_true',
                   help='run the plain eager model instead of the BN-folded channels_last_3d copy')
    add_compile_flag(p, 'the network')
    p.add_argument('--max-failed', type=float, default=DEFAULT_MAX_FAILED,
                   help=f'fraction of found videos that may fail to decode before the exit status is 1 (default '
                        f'{DEFAULT_MAX_FAILED:g}; 1 accepts anything). Missing videos are counted apart.')
    p.add_argument('--retry-failed', action='store_true',
                   help='on resume, try again the videos an earlier run recorded as failed (default: keep them failed)')
    p.add_argument('--dist-timeout', type=float, default=DEFAULT_TIMEOUT_S,
                   help=f'seconds a rank waits for the others at a synchronisation point before the job stops '
                        f'(default {DEFAULT_TIMEOUT_S:g})')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


def add_compile_flag(p: argparse.ArgumentParser, what: str) -> None:
    """--compile / --no-compile over eval.kit.compiling's rule, the same in every job."""
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help=f'torch.compile {what} (inductor; a start of seconds, then 1.2-1.4x faster on the CPU; '
                        'float32 within ~1e-6 of eager). Default: compiled when the run plans enough work to repay '
                        'the start (eval.kit.compiling), else eager; without a C++ compiler, eager with one line')


def add_precision_flags(p: argparse.ArgumentParser, precision_help: str) -> None:
    """--precision (the kit's table: eval.kit.runtime) and --tf32 (its TF32 rule), the same in every job."""
    p.add_argument('--precision', choices=PRECISION_NAMES, default='fp32', help=precision_help)
    p.add_argument('--tf32', action='store_true', help=TF32_HELP)
