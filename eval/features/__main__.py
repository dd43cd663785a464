"""``python -m eval.features``: the feature-extraction job (eval.features.job)."""
import sys

from eval.features.job import main

sys.exit(main())
