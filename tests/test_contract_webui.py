"""Contract: every name the stand-in webui imitates exists in the real host with a compatible signature.

Runs in the webui tier only: under the real webui's Python, with ``SD_WEBUI_ROOT`` pointing at its
checkout (the real host is bootstrapped in this process).  The stand-in cannot be imported next to
it (both are ``modules``), so its surface is described by a child process of the same Python,
imitating the same release, and compared here with the real modules.

    SD_WEBUI_ROOT=/work/webui/v1.6.0 /work/webui/venv-1.6.0/bin/python -m pytest tests/test_contract_webui.py

What is compared, for every public name of every stand-in module (private ``_names`` and private
modules are the stand-in's own): functions by their parameters (names, kinds, order, defaults);
classes by their constructor, and every public method and attribute the stand-in defines;
argparse namespaces (``cmd_opts``) by their fields; anything else by existence.  The reverse is
checked for names the stand-in gates by release: a name the real release has must not be missing
from the stand-in while the stand-in has it in another release.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
STAND_IN_MODULES = TESTS / "fakewebui" / "modules"
RELEASES = ("1.6.0", "1.7.0", "1.8.0", "1.9.4", "1.10.1")

_MISSING = object()

# Dataclasses whose stand-in keeps only some fields: keyword-compatible is enough for them.
KEYWORD_SUBSET_CLASSES = {"processing.StableDiffusionProcessing", "processing.StableDiffusionProcessingTxt2Img"}


# -- describing a module (runs in both processes) --------------------------------------------------


def _default(value: object) -> object:
    if value is inspect.Parameter.empty:
        return ["<none>"]
    if value is None or isinstance(value, (bool, int, float, str)):
        return ["value", value]
    return ["type", type(value).__name__]


def _parameters(function: object) -> list[list[object]] | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, _default(p.default)] for p in signature.parameters.values()]


def _owned(value: object) -> bool:
    """Defined by the host (modules.* or launch), not imported from a library."""
    module = getattr(value, "__module__", None) or ""
    return module.split(".")[0] in ("modules", "launch")


def _describe_class(cls: type) -> dict[str, object]:
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not _owned(klass):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            raw = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(raw, property):
                members[name] = {"kind": "property"}
            elif inspect.isfunction(raw):
                members[name] = {"kind": "function", "params": _parameters(raw)}
            else:
                members[name] = {"kind": "attribute"}
    return {"kind": "class", "params": _parameters(cls), "members": members}


def describe(module: types.ModuleType) -> dict[str, object]:
    """The public surface of a host module as JSON-able data (no property of the module is read)."""
    surface: dict[str, object] = {}
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if inspect.isclass(value):
            if _owned(value):
                surface[name] = _describe_class(value)
        elif inspect.isfunction(value) or inspect.isbuiltin(value):
            if _owned(value):
                surface[name] = {"kind": "function", "params": _parameters(value)}
        elif isinstance(value, argparse.Namespace):
            surface[name] = {"kind": "namespace", "fields": sorted(vars(value))}
        elif not callable(value) or _owned(type(value)):
            surface[name] = {"kind": "value"}
    return surface


def stand_in_module_names() -> list[str]:
    names = sorted(p.stem for p in STAND_IN_MODULES.glob("*.py") if not p.stem.startswith("_"))
    return ["launch", *(f"modules.{name}" for name in names if name != "__init__")]


def describe_stand_in(version: str) -> dict[str, object]:
    """Install the stand-in imitating ``version`` and describe every module it imitates."""
    import tempfile

    sys.path.insert(0, str(TESTS))
    from fakewebui import install_fake_webui

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        install_fake_webui(monkeypatch, version, Path(tmp))
        surfaces: dict[str, object] = {}
        for name in stand_in_module_names():
            try:
                surfaces[name] = describe(importlib.import_module(name))
            except ModuleNotFoundError:
                surfaces[name] = None  # a module this release does not have
        return surfaces


# -- comparing -------------------------------------------------------------------------------------


def parameter_problems(
    where: str, stand_in: list | None, real: list | None, *, keyword_subset: bool = False
) -> list[str]:
    if stand_in is None or real is None:
        return []  # a builtin without a signature on one side: existence is all we can check
    if not keyword_subset:
        if [p[:2] for p in stand_in] != [p[:2] for p in real]:
            return [f"{where}: parameters {_show(stand_in)} but the host has {_show(real)}"]
        mismatched = [s[0] for s, r in zip(stand_in, real, strict=True) if s[2] != r[2]]
        return [f"{where}: default of {', '.join(mismatched)} differs from the host's"] if mismatched else []
    host = {p[0]: p for p in real}
    problems = [f"{where}: parameter {p[0]} is not the host's" for p in stand_in if p[0] not in host]
    problems += [f"{where}: {p[0]} differs from the host's" for p in stand_in if p[0] in host and p != host[p[0]]]
    return problems


def _show(parameters: list) -> str:
    return "(" + ", ".join(p[0] for p in parameters) + ")"


def surface_problems(module: str, stand_in: dict, real: types.ModuleType) -> list[str]:
    problems = []
    real_surface = describe(real)
    for name, entry in stand_in.items():
        where = f"{module}.{name}"
        if not hasattr(real, name):
            problems.append(f"{where}: the host has no such name")
            continue
        host = real_surface.get(name)
        if entry["kind"] == "function" and host and host["kind"] == "function":
            problems += parameter_problems(where, entry["params"], host["params"])
        elif entry["kind"] == "class":
            if not inspect.isclass(getattr(real, name)):
                problems.append(f"{where}: the host's is not a class")
                continue
            subset = f"{module.removeprefix('modules.')}.{name}" in KEYWORD_SUBSET_CLASSES
            host = _describe_class(getattr(real, name))
            problems += parameter_problems(f"{where}()", entry["params"], host["params"], keyword_subset=subset)
            for member, detail in entry["members"].items():
                if inspect.getattr_static(getattr(real, name), member, _MISSING) is _MISSING:
                    if not subset or detail["kind"] != "attribute":
                        problems.append(f"{where}.{member}: the host's class has no such member")
                elif detail["kind"] == "function" and member in host["members"]:
                    real_params = host["members"][member].get("params")
                    problems += parameter_problems(f"{where}.{member}", detail["params"], real_params)
        elif entry["kind"] == "namespace":
            missing = sorted(set(entry["fields"]) - set(vars(getattr(real, name))))
            if missing:
                problems.append(f"{where}: the host has no {', '.join(missing)}")
    return problems


# -- the test --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_release() -> str:
    from fakewebui.install import bootstrap_real_webui, real_webui_root

    bootstrap_real_webui(real_webui_root())
    from modules import launch_utils

    tag = launch_utils.git_tag().lstrip("v").split("-")[0]  # "v1.6.0", or "1.6.0" from CHANGELOG.md
    same_minor = [release for release in RELEASES if release.rsplit(".", 1)[0] == tag.rsplit(".", 1)[0]]
    if tag not in RELEASES and not same_minor:
        pytest.skip(f"the stand-in does not imitate A1111 {tag}")
    return tag if tag in RELEASES else same_minor[0]


@pytest.fixture(scope="module")
def stand_in_surfaces() -> dict[str, dict[str, object]]:
    """The stand-in's surface for every release it imitates, described by one child process of this Python."""
    environment = {k: v for k, v in os.environ.items() if k not in ("SD_WEBUI_ROOT", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, __file__, *RELEASES],
        capture_output=True,
        text=True,
        check=True,
        cwd=TESTS.parent,
        env=environment,
        timeout=600,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.webui
def test_stand_in_names_exist_in_the_real_host_with_compatible_signatures(
    real_release: str, stand_in_surfaces: dict[str, dict[str, object]]
) -> None:
    stand_in = stand_in_surfaces[real_release]
    problems = []
    for module, surface in stand_in.items():
        try:
            real = importlib.import_module(module)
        except ModuleNotFoundError:
            if surface is not None:
                problems.append(f"{module}: the host has no such module")
            continue
        if surface is None:
            problems.append(f"{module}: the host has it, the stand-in for {real_release} does not")
        else:
            problems += surface_problems(module, surface, real)
    assert not problems, f"stand-in for {real_release} vs the real host:\n" + "\n".join(problems)


@pytest.mark.webui
def test_names_gated_by_release_are_present_when_the_real_host_has_them(
    real_release: str, stand_in_surfaces: dict[str, dict[str, object]]
) -> None:
    everywhere: dict[str, set[str]] = {}
    for surfaces in stand_in_surfaces.values():
        for module, surface in surfaces.items():
            everywhere.setdefault(module, set()).update(surface or {})
    this_release = stand_in_surfaces[real_release]
    problems = []
    for module, names in everywhere.items():
        try:
            real = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        present = set(this_release.get(module) or {})
        problems += [f"{module}.{name}" for name in sorted(names - present) if name in vars(real)]
    assert not problems, f"the real {real_release} has these, the stand-in for it does not: {problems}"


if __name__ == "__main__":  # the child process: describe the stand-in for each release in argv
    print(json.dumps({release: describe_stand_in(release) for release in sys.argv[1:]}))
