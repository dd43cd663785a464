"""``python -m eval.flops i3d_r50 --views 3x10``: the FLOP and parameter report (eval.score.flop_report)."""
import sys

from eval.score.flop_report import main

if __name__ == '__main__':
    sys.exit(main())
