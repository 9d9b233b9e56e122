"""The core is host-free: only extensions_ssd1b/webui.py may touch A1111, and only lazily."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "extensions_ssd1b"
HOST_PACKAGES = {"modules", "launch", "sgm", "ldm", "gradio", "modules_forge"}


def test_importing_every_core_module_imports_no_host_package():
    names = sorted(f"extensions_ssd1b.{path.stem}" for path in CORE.glob("*.py") if path.stem != "__main__")
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=CORE.parent, capture_output=True, text=True, check=True)
    assert HOST_PACKAGES.isdisjoint(json.loads(done.stdout))
    assert "extensions_ssd1b.webui" in names  # the adapter itself is importable without a host


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
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not (_module_level_imports(tree) & HOST_PACKAGES), f"{path.name} imports the host at import time"
        if _all_imports(tree) & {"modules", "gradio", "launch"}:
            touching.add(path.name)
    assert touching == {"webui.py"}
