"""Compiled fine-tuning with gradient checkpointing, in CI after make test (a second cold compile of the training
step, 20-30 s on 2 cores, kept out of the developer loop; tests/test_compile_policy.py compiles the plain step):
the recomputed blocks run inside the compiled graph (zoo._features.checkpointed drops the BN-statistics context
that dynamo cannot trace) and train as the eager run does, BN's running statistics updated once."""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'tests'))

from finetune_test_models import assert_trained_alike, compiled_against_eager  # noqa: E402


def test_compiled_fine_tuning_with_gradient_checkpointing_trains_as_eager(tmp_path):
    runs, compiled_calls = compiled_against_eager(tmp_path, ('--grad-checkpointing',))
    assert_trained_alike(runs, compiled_calls)
