"""The scoring job: the command lines of the benchmark engine (python -m eval, python -m eval.kinetics)."""
