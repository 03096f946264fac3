"""Colab readiness: `pip install "refimpl[book] @ git+URL"` is all a notebook needs.

Every module a notebook (or refimpl itself) imports must come from the standard library,
refimpl, refimpl's dependencies, or pyproject.toml's `book` extra, which Colab's first
cell installs. Import names are mapped to the distributions that provide them with
`importlib.metadata.packages_distributions()` (sklearn -> scikit-learn, IPython -> ipython).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache

import pytest
from packaging.requirements import Requirement

from tests.colab_cell import COLAB_CELL
from tests.notebooks import ROOT, code_cells, load, notebook_paths, source

NOTEBOOKS = notebook_paths()
IDS = [p.name for p in NOTEBOOKS]
MODULES = sorted((ROOT / "refimpl").rglob("*.py"))  # refimpl/nn/ is a package


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@cache
def allowed_distributions() -> frozenset[str]:
    """refimpl's dependencies and its `book` extra, read from pyproject.toml itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["book"]
    return frozenset(_normalized(Requirement(s).name) for s in specs)


def python_source(cell_source: str) -> str:
    """A cell as plain Python: IPython's own transformer turns %magics and !shell into calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def top_level_imports(code: str) -> set[str]:
    """The top-level module of every absolute import in ``code`` (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def unprovided(modules: set[str]) -> list[str]:
    """Problems: modules that neither the standard library, refimpl nor its extras provide."""
    provided_by = importlib.metadata.packages_distributions()
    problems = []
    for module in sorted(modules - set(sys.stdlib_module_names) - {"refimpl", "__future__"}):
        dists = {_normalized(d) for d in provided_by.get(module, [])}
        if not dists:
            problems.append(f"{module}: not installed, so no distribution is known to provide it")
        elif not dists & allowed_distributions():
            problems.append(
                f"{module} (from {', '.join(sorted(dists))}): add it to pyproject.toml's "
                "`book` extra (or refimpl's dependencies)"
            )
    return problems


def test_the_check_sees_through_aliases():
    """Sanity: the mapping knows the import names that differ from distribution names."""
    assert top_level_imports("import sklearn.datasets as d\nfrom IPython.display import Image") == {
        "sklearn",
        "IPython",
    }
    assert unprovided({"sklearn", "IPython", "math", "refimpl"}) == []
    assert unprovided({"pytest"}) and unprovided({"no_such_module_xyz"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_imports_are_installed_by_the_colab_cell(path):
    modules = set()
    for cell in code_cells(load(path)):
        modules |= top_level_imports(python_source(source(cell)))
    problems = unprovided(modules)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    "path", MODULES, ids=[p.relative_to(ROOT / "refimpl").as_posix() for p in MODULES]
)
def test_refimpl_imports_are_dependencies_or_book_extra(path):
    problems = unprovided(top_level_imports(path.read_text(encoding="utf-8")))
    where = path.relative_to(ROOT).as_posix()
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_cell_is_the_canonical_colab_cell(path):
    first = source(code_cells(load(path))[0])
    assert first == COLAB_CELL, (
        f"{path.name}: the first code cell differs from tests/colab_cell.py's COLAB_CELL; "
        "run `python tests/colab_cell.py` to rewrite it"
    )
