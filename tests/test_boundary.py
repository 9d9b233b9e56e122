"""The layers below host/ are host-free: only extensions_ssd1b/host touches A1111, and only lazily."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "extensions_ssd1b"
HOST_PACKAGES = {"modules", "launch", "sgm", "ldm", "gradio", "modules_forge"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, ``__main__`` aside (running it starts the CLI)."""
    found = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        if parts[-1] != "__main__":
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_importing_every_core_module_imports_no_host_package():
    names = sorted(_modules())
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=CORE.parent, capture_output=True, text=True, check=True)
    assert HOST_PACKAGES.isdisjoint(json.loads(done.stdout))
    assert "extensions_ssd1b.host.load" in names  # the adapter itself is importable without a host


def _module_level_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in tree.body:  # only statements that run at import time
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _all_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_adapter_mentions_the_host_and_it_imports_it_lazily():
    touching = set()
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not (_module_level_imports(tree) & HOST_PACKAGES), f"{name} imports the host at import time"
        if _all_imports(tree) & HOST_PACKAGES:
            touching.add(name)
    assert touching, "the adapter no longer imports the host: this test checks nothing"
    assert {name for name in touching if not name.startswith("extensions_ssd1b.host.")} == set()
