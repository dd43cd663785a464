"""Video benchmarks: multi-view Kinetics testing (python -m eval.kinetics), FLOP reports (python -m eval.flops).

views (which views a video yields) -> decode / datasets (frames of those views) -> runner (model on views)
-> meter (view scores -> video scores, metrics) -> report (files); demo and synthetic supply data anywhere.
At scale: distributed (torchrun ranks, shards, timed collectives) and store (durable per-video scores,
manifest) let resumable run a test over many processes and pick it up again after a crash.
"""
