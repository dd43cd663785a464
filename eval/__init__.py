"""Measuring zoo models on video: three jobs over one kit.

    data/      what every job reads: decoding, benchmark records and presets, test views, snippets, clips
    kit/       what every job runs on: job runner, run folder and resume, ranks, console, FLOPs, and the
               benchmark engine (the multi-view test) that scoring and fine-tuning share
    score/     python -m eval, python -m eval.kinetics: score a model on a benchmark
    features/  python -m eval.features: per-snippet features of whole data sets
    finetune/  python -m eval.finetune: train on a benchmark, then test through the engine

Imports flow data -> kit -> jobs; no job imports another (tests/test_import_direction.py).
"""

import importlib.abc
import sys

# Modules of the flat eval/ of before 2026-12-03 and where each now lives: importing an old name fails with
# an error that names the new module (a user's script must not break silently or cryptically).
MOVED_MODULES = {
    'datasets': 'eval.data.records', 'decode': 'eval.data.decode', 'benchmarks': 'eval.data.presets',
    'views': 'eval.data.views', 'snippets': 'eval.data.snippets', 'train_data': 'eval.data.train_clips',
    'synthetic': 'eval.data.synthetic', 'demo': 'eval.data.demo', 'engine': 'eval.kit.engine',
    'config': 'eval.kit.config', 'resumable': 'eval.kit.shards, eval.kit.rundir and eval.kit.resume',
    'store': 'eval.kit.store', 'runner': 'eval.kit.loop', 'meter': 'eval.kit.meter', 'console': 'eval.kit.console',
    'distributed': 'eval.kit.distributed', 'cli': 'eval.score.cli', 'feature_presets': 'eval.features.presets',
    'feature_stream': 'eval.features.stream', 'feature_outputs': 'eval.features.outputs',
    'recipe': 'eval.finetune.recipe', 'train_state': 'eval.finetune.state',
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len('eval.'):] if fullname.startswith('eval.') else None
        if old in MOVED_MODULES:
            raise ModuleNotFoundError(f'{fullname} moved to {MOVED_MODULES[old]} (eval/ is now data/, kit/ and '
                                      'one folder per job; see docs/layout.md)', name=fullname)
        return None


sys.meta_path.append(_MovedModuleFinder())
