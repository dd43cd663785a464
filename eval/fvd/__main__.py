"""``python -m eval.fvd``: the FVD job (eval.fvd.job)."""
import sys

from eval.fvd.job import main

sys.exit(main())
