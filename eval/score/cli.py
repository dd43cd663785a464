"""The command-line flags of a benchmark run, shared by every front end (they parse, the engine runs)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from eval.data.decode import FPS_HELP
from eval.data.presets import BENCHMARKS, describe_benchmarks
from eval.kit.config import AGGREGATIONS, RunRequest
from eval.kit.flags import add_execution_flags, add_model_flags, add_precision_flags
from eval.kit.engine import run


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--data', help='annotation CSV, list file, or folder (omit for the embedded demo)')
    p.add_argument('--annotations', help='a Kinetics CSV whose videos are under --data, or the folder of a '
                                         "benchmark's split files")
    p.add_argument('--split', help='Kinetics: keep only CSV rows of this split (e.g. val); UCF-101 / HMDB-51: 1, 2 or 3')
    p.add_argument('--max-videos', type=int, help='only the first N listed videos')




def add_view_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--views', help="SxT: spatial crops x temporal clips (default: the model's published test)")
    p.add_argument('--frames', type=int, help='frames per clip (default: model config)')
    p.add_argument('--rate', type=int, help='sampling rate (default: model config)')
    p.add_argument('--scale', type=int, help='short side before cropping (default: model config test_scale)')
    p.add_argument('--crop', type=int, help='crop size (default: 224 for 1x1, else model test_crop_size)')
    p.add_argument('--fps', type=float, help=FPS_HELP.format(default="the model config's fps"))
    p.add_argument('--aggregate', choices=AGGREGATIONS, default='softmax',
                   help='per-video score: mean of view softmax (Caffe2, default) or of raw outputs')




def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--batch-size', type=int, help='views per forward pass, across videos (default 8 on GPU, 2 on CPU)')
    add_precision_flags(p, 'fp32 (default, exact), or bf16 / fp16 backbone with a float32 head (faster, not bit-exact)')
    add_execution_flags(p)
    p.add_argument('--out', help='output folder, resumed when it holds an unfinished run '
                                 '(default runs/<model>-<views>-<time>)')
    p.add_argument('--cache-dir', help='demo set folder (default: the demo/ folder of the zoo cache)')
    p.add_argument('--no-flops', action='store_true', help='skip the fvcore FLOP report')


def build_parser(prog: str, description: str, benchmark: Optional[str] = None) -> argparse.ArgumentParser:
    """The flags; ``benchmark`` fixes the preset (the Kinetics front end), else ``--benchmark`` chooses it."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog='benchmarks:\n' + describe_benchmarks(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if benchmark is None:
        p.add_argument('--benchmark', choices=list(BENCHMARKS), default='kinetics400',
                       help='which benchmark preset reads --data (default kinetics400: CSV, list or folders)')
    else:
        p.set_defaults(benchmark=benchmark)
    for add in (add_model_flags, add_data_flags, add_view_flags, add_run_flags):
        add(p)
    return p


def main(prog: str, description: str, argv: Optional[List[str]] = None, benchmark: Optional[str] = None) -> int:
    args = build_parser(prog, description, benchmark).parse_args(argv)
    command = ' '.join([prog] + (argv if argv is not None else sys.argv[1:]))
    return run(RunRequest.from_namespace(args, command=command), keep_heap=True)
