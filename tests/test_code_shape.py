"""eval/ stays readable: every module says its job in a docstring, and no function runs past 60 lines (a phase
that grows longer is split into named steps)."""
import ast
from pathlib import Path

EVAL = Path(__file__).resolve().parents[1] / 'eval'
MAX_FUNCTION_LINES = 60


def modules():
    return sorted(EVAL.rglob('*.py'))


def test_no_function_in_eval_is_longer_than_60_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{path.relative_to(EVAL)}:{node.lineno} {node.name} ({lines} lines)')
    assert long == []


def test_every_eval_module_starts_with_a_docstring():
    assert [str(p.relative_to(EVAL)) for p in modules() if ast.get_docstring(ast.parse(p.read_text())) is None] == []
