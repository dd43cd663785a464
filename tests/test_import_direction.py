"""Imports flow one way: zoo (and eval) use converters; converters never import zoo or eval."""
import re
import subprocess
import sys
from pathlib import Path

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
