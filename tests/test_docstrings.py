"""Every public function and class of refimpl shows a runnable example in its docstring.

The examples are doctests (`make test` runs `pytest --doctest-modules refimpl`) and appear
on the API page through autodoc. Modules are found with pkgutil, so a module added later
is held to the same rule without editing this file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import refimpl

# Timing functions whose examples would spend seconds measuring: their examples are
# marked `# doctest: +SKIP`. Anything else must have at least one example that runs.
TIMING_ONLY = {
    "refimpl.bench.numpy_against_torch",
    "refimpl.bench.closed_form_against_graph",
    "refimpl.bench.main",
}


def module_names() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(refimpl.__path__, prefix="refimpl."))


def public_objects() -> list[tuple[str, object]]:
    """(qualified name, object) of every public function and class refimpl defines.

    Public: listed in the module's ``__all__``, or, without one, not starting with ``_``.
    Defined: the object's ``__module__`` is that module (re-exports are checked where
    they are defined).
    """
    found = []
    for name in module_names():
        module = importlib.import_module(name)
        names = getattr(module, "__all__", None) or [n for n in vars(module) if n[0] != "_"]
        for attr in names:
            obj = getattr(module, attr)
            is_code = inspect.isfunction(obj) or inspect.isclass(obj)
            if is_code and getattr(obj, "__module__", None) == name:
                found.append((f"{name}.{attr}", obj))
    return found


PUBLIC = public_objects()


def test_the_walk_finds_the_modules():
    names = set(module_names())
    assert {"refimpl.core", "refimpl.functional", "refimpl.nn", "refimpl.check"} <= names
    assert len(PUBLIC) > 40


@pytest.mark.parametrize("qualname, obj", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_public_name_has_a_runnable_example(qualname, obj):
    doc = obj.__doc__ or ""
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith(">>>")]
    assert examples, f"{qualname}: the docstring has no `>>>` example"
    if qualname not in TIMING_ONLY:
        running = [line for line in examples if "doctest: +SKIP" not in line]
        assert running, f"{qualname}: every example line is skipped; show one that runs"


@pytest.mark.parametrize("name", module_names())
def test_every_module_is_on_the_api_page(name):
    api = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text(encoding="utf-8")
    assert f".. automodule:: {name}\n" in api, f"book/api.md does not document {name}"
