"""Measuring zoo models on video: three jobs over one kit.

    data/      what every job reads: decoding, benchmark records and presets, test views, snippets, clips
    kit/       what every job runs on: job runner, run folder and resume, ranks, console, FLOPs, and the
               benchmark engine (the multi-view test) that scoring and fine-tuning share
    score/     python -m eval, python -m eval.kinetics: score a model on a benchmark
    features/  python -m eval.features: per-snippet features of whole data sets
    finetune/  python -m eval.finetune: train on a benchmark, then test through the engine

Imports flow data -> kit -> jobs; no job imports another (tests/test_import_direction.py).
"""
