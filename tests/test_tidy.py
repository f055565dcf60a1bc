"""Style enforced by a test: the core stays pure, money stays integral, config stays central,
and the web process and the operator tools import no Faust."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "app" / "domain"
IO_MODULES = {"faust", "mode", "asyncpg", "redis", "aiohttp", "aiokafka", "asyncio", "socket", "os", "time",
              "random", "uuid", "datetime", "requests", "subprocess"}
SOURCE_DIRS = ["app", "agents", "tables", "storage", "config"]
# The web process (`python -m app.api.server`, see Procfile) and the operator tools; they
# name topics through app.topics and read records through tables/wallets.py and tables/pools.py.
FAUST_FREE = ["app.api.server", "app.reconcile", "app.jp_verify", "app.demo"]


def python_files(*dirs: Path):
    for d in dirs:
        yield from (p for p in d.rglob("*.py") if ".venv" not in p.parts)


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_core_imports_no_io():
    offenders = []
    for path in python_files(CORE):
        bad = set(imported_modules(ast.parse(path.read_text()))) & IO_MODULES
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_core_has_no_floats():
    offenders = []
    for path in python_files(CORE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} float literal")
            if isinstance(node, ast.Name) and node.id == "float":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} float()")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} true division")
    assert not offenders, offenders


def test_environment_is_read_only_in_config():
    offenders = []
    for path in python_files(*(ROOT / d for d in SOURCE_DIRS)):
        if path.is_relative_to(ROOT / "config"):
            continue
        text = path.read_text()
        if "os.environ" in text or "getenv(" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_no_assert_for_checks_in_shipped_code():
    offenders = []
    for path in python_files(*(ROOT / d for d in SOURCE_DIRS)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", FAUST_FREE)
def test_web_process_and_operator_tools_import_no_faust(module):
    probe = f"import sys, {module}; print(sorted(m for m in ('faust', 'mode') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing {module} imports {done.stdout.strip()}"
