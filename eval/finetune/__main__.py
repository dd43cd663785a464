"""``python -m eval.finetune``: the fine-tuning job (eval.finetune.job)."""
import sys

from eval.finetune.job import main

sys.exit(main())
