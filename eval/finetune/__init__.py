"""The fine-tuning job: train a zoo model on a benchmark with the Caffe2 recipe, then test it through the
benchmark engine. recipe (optimiser, schedule, BN, precision) -> state (checkpoints, metrics log) -> job."""
from eval.finetune.job import main  # noqa: F401
