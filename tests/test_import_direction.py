"""Imports flow one way: zoo (and eval) use converters; converters never import zoo or eval."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONVERTER_MODULES = sorted(f'converters.{p.stem}' for p in (REPO / 'converters').glob('*.py') if p.stem != '__init__')


def test_importing_every_converter_loads_neither_zoo_nor_eval():
    code = ('import importlib, sys\n'
            f'for name in {CONVERTER_MODULES!r}:\n'
            '    importlib.import_module(name)\n'
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zoo', 'eval')))\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
    assert len(CONVERTER_MODULES) >= 5


def test_no_converter_source_names_zoo_or_eval_in_an_import():
    pattern = re.compile(r'^\s*(from\s+(zoo|eval)(\.|\s)|import\s+(zoo|eval)\b)', re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / 'converters').glob('*.py') if pattern.search(p.read_text())]
    assert offenders == []


def test_the_builder_resolves_no_loader_by_name():
    source = (REPO / 'zoo' / '_builder.py').read_text()
    assert 'importlib' not in source and 'converters.caffe2:' not in source


# eval/: data -> kit -> jobs. A job folder is one task over the kit; no job imports another, and the shared
# layers never reach up into a job.
EVAL_LAYERS = {'data': 0, 'kit': 1}
EVAL_JOBS = ('score', 'features', 'finetune', 'fvd')


def eval_imports():
    """(importing file, imported eval sub-package) for every eval import in eval/ (function-level ones too)."""
    import ast
    edges = []
    for path in sorted((REPO / 'eval').rglob('*.py')):
        rel = path.relative_to(REPO / 'eval')
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else ['eval.<relative>']
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split('.')[0] == 'eval':
                    edges.append((rel, name))
    return edges


def test_eval_uses_absolute_imports_only():
    assert [(str(f), n) for f, n in eval_imports() if n == 'eval.<relative>'] == []


def test_eval_imports_flow_from_data_through_the_kit_to_the_jobs_and_no_job_imports_another():
    offenders = []
    for rel, name in eval_imports():
        if len(rel.parts) < 2:
            continue                      # the command modules at eval/'s top (python -m eval, eval.kinetics ...)
        here, there = rel.parts[0], name.split('.')[1]
        if there == here:
            continue
        if here in EVAL_JOBS and (there in EVAL_LAYERS):
            continue
        if here in EVAL_LAYERS and there in EVAL_LAYERS and EVAL_LAYERS[there] < EVAL_LAYERS[here]:
            continue
        offenders.append(f'{rel} imports {name}')
    assert offenders == []
    folders = {rel.parts[0] for rel, _ in eval_imports() if len(rel.parts) > 1}
    assert folders <= set(EVAL_LAYERS) | set(EVAL_JOBS)


def test_eval_has_no_import_cycle_between_modules():
    import graphlib
    graph = {}
    for rel, name in eval_imports():
        module = 'eval.' + '.'.join(rel.with_suffix('').parts).replace('.__init__', '')
        graph.setdefault(module, set()).add(name)
    graphlib.TopologicalSorter(graph).prepare()     # raises CycleError naming the loop


def test_every_module_of_the_old_flat_eval_fails_naming_where_it_moved():
    import importlib
    import eval
    for old, new in eval.MOVED_MODULES.items():
        with pytest.raises(ModuleNotFoundError, match=f'eval.{old} moved to {re.escape(new)}'):
            importlib.import_module(f'eval.{old}')
        importlib.import_module(new.split(',')[0])       # and the new home is there
