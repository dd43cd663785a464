"""The scoring job: its command lines over the kit's benchmark engine: python -m eval and python -m eval.kinetics
(cli), python -m eval.report (rescore: re-score or ensemble saved runs), python -m eval.flops (flop_report)."""
