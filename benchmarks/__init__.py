"""Developer speed benchmarks of the zoo, kept beside their recorded results; not part of the installed package.

Run them as scripts from the repository root (``python benchmarks/bench_network.py``); they use the
library's own functions (zoo.inference, eval.kit.loop, eval.data.decode, eval.kit.flops) and share ``timing`` and
``machine``.
"""
