"""``python -m eval.flops i3d_r50 --views 3x10``: the FLOP and parameter report of eval.kit.flops."""
import sys

from eval.kit.flops import main

if __name__ == '__main__':
    sys.exit(main())
