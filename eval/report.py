"""``python -m eval.report runs/a/scores.npz [runs/b/scores.npz ...]``: re-score or ensemble saved runs
(eval.kit.report)."""
import sys

from eval.score.rescore import main

if __name__ == '__main__':
    sys.exit(main())
