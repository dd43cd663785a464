"""The fine-tuning job: train a zoo model on a benchmark with the Caffe2 recipe, then test it through the
benchmark engine. recipe (optimiser, schedule, BN, the CPU bf16 check) -> state (checkpoints, metrics log)
-> job."""
from eval.finetune.job import main  # noqa: F401
