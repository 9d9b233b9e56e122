"""The package's layers: every import, at module level or inside a function, goes down a layer or stays in its
package, and no chain of imports leads back to where it started."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "extensions_ssd1b"
ROOT = PACKAGE.name

# A module may import from its own package and from any lower layer; vae and tools are siblings
# that do not import each other.  core holds the small leaf modules every layer may use.
LAYERS: Mapping[str, int] = {
    "core": 0,
    "io": 1,
    "arch": 2,
    "diffusers": 3,
    "vae": 4,
    "tools": 4,
    "control": 4,
    "lora": 4,
    "host": 5,
}
# Modules outside the layer packages: the package itself (its version), ``python -m``, and the old
# name generated webui configs use as their build target.
TOP_LEVEL: Mapping[str, str] = {ROOT: "core", f"{ROOT}.__main__": "tools", f"{ROOT}.webui": "host"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(package: Path = PACKAGE) -> dict[str, tuple[str, bool]]:
    """Module name → (source, is a package), for every module of ``package``."""
    return {
        module_name(path, package): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(package.rglob("*.py"))
    }


def imported(name: str, source: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (functions included)."""
    known = set(known)
    found: set[str] = set()
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == ROOT}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != ROOT:
                continue
            # "from . import checkpoints" imports a module; "from .header import read_header" a name.
            modules = {f"{base}.{alias.name}" for alias in node.names} & known
            found |= modules or {base}
    return found & known


def layer_of(name: str) -> str:
    return TOP_LEVEL.get(name) or name.split(".")[1]


def package_of(name: str) -> str:
    return TOP_LEVEL.get(name) or name.split(".")[1]


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if package_of(target) != package_of(name) and LAYERS[layer_of(target)] >= LAYERS[layer_of(name)]
    ]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the modules along it (one per strongly connected group; self-imports too)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = sources(package)
    return {name: imported(name, text, is_package, modules) - {name} for name, (text, is_package) in modules.items()}


def test_every_module_is_in_a_layer() -> None:
    unplaced = [name for name in sources() if layer_of(name) not in LAYERS]
    assert unplaced == []


def test_no_module_imports_a_higher_layer_or_a_sibling() -> None:
    assert upward_imports(import_graph()) == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_package_inits_import_nothing() -> None:
    """Importing one layer's module runs no other code: every ``__init__`` is a docstring (and the version)."""
    for name, (source, is_package) in sources().items():
        if is_package:
            statements = [node for node in ast.parse(source).body if isinstance(node, ast.Import | ast.ImportFrom)]
            assert statements == [], name


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """A cycle inside a layer and an upward import, in a small package laid out like ours."""
    package = tmp_path / ROOT
    files = {
        "__init__.py": "",
        "io/__init__.py": "",
        "io/a.py": "def f():\n    from . import b\n",
        "io/b.py": "from .a import f\n",
        "arch/__init__.py": "",
        "arch/detect.py": "from ..io import a\n",
        "core/__init__.py": "",
        "core/errors.py": "import extensions_ssd1b.arch.detect\n",
    }
    for relative, text in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    graph = import_graph(package)
    assert graph[f"{ROOT}.arch.detect"] == {f"{ROOT}.io.a"}
    assert cycles(graph) == [[f"{ROOT}.io.a", f"{ROOT}.io.b", f"{ROOT}.io.a"]]
    assert upward_imports(graph) == [f"{ROOT}.core.errors (core) imports {ROOT}.arch.detect (arch)"]
