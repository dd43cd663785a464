"""The FLOP and parameter report of a zoo model for a view geometry: ``python -m eval.flops i3d_r50 --views
3x10`` (fvcore, per view and per video; eval.kit.flops counts)."""
from __future__ import annotations

import argparse
import json

from eval.kit.config import parse_views
from eval.kit.flops import flop_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', nargs='?', default='i3d_r50', help='a name from zoo.list_models()')
    parser.add_argument('--views', default='1x1', help='SxT: spatial crops x temporal clips (default 1x1)')
    parser.add_argument('--frames', type=int, help='frames per view (default: the model config)')
    parser.add_argument('--crop', type=int, help='crop size (default: 224 for 1x1, else the test crop)')
    parser.add_argument('--json', help='also write the report as JSON here')
    args = parser.parse_args(argv)
    try:
        views = parse_views(args.views)
        report = flop_report(args.model, views, args.frames, args.crop)
    except (KeyError, ValueError) as e:
        parser.exit(2, f'error: {e.args[0] if e.args else e}\n')
    print(report.table())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0
