"""The patch registry: our wrapper never cuts another extension out, and undoing it restores the host's function."""

from __future__ import annotations

import functools
import types

import pytest

from extensions_ssd1b.host import patching


def host_function(x: int) -> list[str]:
    return ["host"]


@pytest.fixture
def owner():
    module = types.SimpleNamespace(load=host_function)
    yield module
    patching.unpatch(module, "load")


def ours(original, x):
    return ["ssd1b", *original(x)]


def wrap_by_other_extension(owner, *, with_wraps: bool) -> None:
    below = owner.load

    def other(x):
        return ["other", *below(x)]

    owner.load = functools.wraps(below)(other) if with_wraps else other


@pytest.mark.parametrize("with_wraps", [True, False], ids=["functools.wraps", "plain"])
def test_another_wrapper_above_ours_survives_reload_ui(owner, with_wraps: bool) -> None:
    patching.patch(owner, "load", ours)
    wrap_by_other_extension(owner, with_wraps=with_wraps)
    top = owner.load

    patching.unpatch_all()  # on_script_unloaded
    assert owner.load is top and owner.load(1) == ["other", "host"]  # still their chain; ours passes through
    patching.patch(owner, "load", ours)  # scripts imported again

    assert owner.load is top
    assert owner.load(1) == ["other", "ssd1b", "host"]


def test_patching_twice_wraps_once_and_unpatching_restores_the_host_function(owner) -> None:
    patching.patch(owner, "load", ours)
    patching.patch(owner, "load", ours)
    assert owner.load(1) == ["ssd1b", "host"]
    assert patching.is_ours(owner.load)

    patching.unpatch_all()
    assert owner.load is host_function
    assert patching.installed() == []


def test_no_marker_travels_into_the_wrappers_of_others(owner) -> None:
    patching.patch(owner, "load", ours)
    wrap_by_other_extension(owner, with_wraps=True)
    assert not patching.is_ours(owner.load)
    assert not any("ssd1b" in key for key in vars(owner.load))
