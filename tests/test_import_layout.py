"""refimpl's modules import each other without a circle.

A circle (``refimpl.nn`` re-exporting ``SyncBatchNorm`` from ``refimpl.distributed``, which
imports ``refimpl.nn``'s base classes) works only as long as every module happens to find
what it needs in a half-initialized one; a reordered import breaks it. Two checks:

- static: the graph of imports that run when a module is imported (not those inside
  functions), with the packages Python imports on the way (``import a.b.c`` runs
  ``a/__init__`` and ``a/b/__init__`` first), has no cycle;
- dynamic: in a fresh interpreter, each module is imported on its own (refimpl's modules
  purged from ``sys.modules`` before each), and an import hook records every import of a
  package or module that is still initializing, made from outside it, or taking from it
  a name that is not a submodule. There must be none.

Both checks are first shown to catch the old layout, rebuilt in miniature.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import refimpl

ROOT = Path(refimpl.__file__).resolve().parents[1]


# --------------------------------------------------------------------------- static


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def runtime_imports(body):
    """Import statements that run when the module is imported: at module level, in
    if/try/with/for blocks and class bodies, not in functions or ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from runtime_imports(node.orelse)
        else:
            for name in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, name, None)
                if isinstance(block, list):
                    yield from runtime_imports(block)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules its import runs (the packages on the way included,
    except those the importer is itself inside, which are initialized already)."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for target in targets:
                if target not in files:
                    continue  # outside the package
                parts = target.split(".")
                for k in range(1, len(parts) + 1):
                    step = ".".join(parts[:k])
                    inside = name == step or name.startswith(step + ".")
                    if step != name and (step == target or not inside):
                        graph[name].add(step)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


# The old layout in miniature, and the "obvious" package fix that keeps the circle:
# nn's __init__ re-exporting, at import time, a class whose module imports nn's bases.
OLD_LAYOUTS = {
    "module": {
        "__init__.py": "from circ import nn\n",
        "nn.py": "class Base:\n    pass\n\n\nfrom circ.dist import Sync\n",
        "dist.py": "from circ.nn import Base\n\n\nclass Sync(Base):\n    pass\n",
    },
    "eager package": {
        "__init__.py": "from circ import nn\n",
        "nn/__init__.py": "from circ.nn.base import Base\nfrom circ.dist import Sync\n",
        "nn/base.py": "class Base:\n    pass\n",
        "dist.py": "from circ.nn.base import Base\n\n\nclass Sync(Base):\n    pass\n",
    },
}


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "circ" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("layout", sorted(OLD_LAYOUTS))
def test_the_static_check_finds_the_old_circle(tmp_path, layout):
    root = write_package(tmp_path, OLD_LAYOUTS[layout])
    cycle = find_cycle(import_graph(root, "circ"))
    assert cycle is not None and "circ.dist" in cycle and "circ.nn" in cycle


def test_refimpl_imports_have_no_cycle():
    graph = import_graph(ROOT, "refimpl")
    assert {"refimpl.nn", "refimpl.nn.batchnorm", "refimpl.distributed"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# --------------------------------------------------------------------------- dynamic

HOOK = r"""
import builtins, importlib, importlib.util, json, sys

root, modules = sys.argv[1], sys.argv[2:]
problems = []
real_import = builtins.__import__


def initializing(name):
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def is_module(name):
    try:
        return name in sys.modules or importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def hook(name, globals=None, locals=None, fromlist=(), level=0):
    # globals is None for the import machinery's own calls (find_spec's parent import)
    importer = (globals or {}).get("__name__")
    if importer and level == 0 and (name == root or name.startswith(root + ".")):
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            step = ".".join(parts[:k])
            if not initializing(step):
                continue
            if not (importer == step or importer.startswith(step + ".")):
                problems.append(f"{importer} imports {name} while {step} initializes")
            elif step == name and fromlist:
                taken = [a for a in fromlist if a != "*" and not is_module(f"{name}.{a}")]
                if taken:
                    problems.append(f"{importer} takes {taken} from {name} while it initializes")
    return real_import(name, globals, locals, fromlist, level)


builtins.__import__ = hook
for module in modules:
    for key in [k for k in sys.modules if k == root or k.startswith(root + ".")]:
        del sys.modules[key]
    importlib.import_module(module)
print(json.dumps(problems))
"""


def import_problems(root: str, modules: list[str], path: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", HOOK, root, *modules],
        capture_output=True,
        text=True,
        cwd=path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", sorted(OLD_LAYOUTS))
def test_the_import_hook_finds_the_old_circle(tmp_path, layout):
    root = write_package(tmp_path, OLD_LAYOUTS[layout])
    problems = import_problems("circ", ["circ", "circ.dist"], root)
    assert problems and all("circ.dist imports circ.nn" in p for p in problems), problems


def test_each_refimpl_module_imports_alone_without_a_half_initialized_module():
    names = sorted(i.name for i in pkgutil.walk_packages(refimpl.__path__, prefix="refimpl."))
    assert {"refimpl.nn.base", "refimpl.nn.batchnorm", "refimpl.nn.swap"} <= set(names)
    assert import_problems("refimpl", ["refimpl", *names], ROOT) == []


def test_the_public_paths_still_work():
    import refimpl.nn as rnn
    from refimpl.distributed import SyncBatchNorm
    from refimpl.nn import _BatchNorm, _NormBase, _register_affine, _register_running_stats
    from refimpl.recurrent import MaskedBatchNorm1d, PerStepBatchNorm1d

    assert rnn.SyncBatchNorm is SyncBatchNorm and issubclass(SyncBatchNorm, _BatchNorm)
    assert rnn.MaskedBatchNorm1d is MaskedBatchNorm1d and issubclass(MaskedBatchNorm1d, _NormBase)
    assert rnn.PerStepBatchNorm1d is PerStepBatchNorm1d
    assert callable(_register_affine) and callable(_register_running_stats)
    for name in rnn.__all__ + ["SyncBatchNorm", "MaskedBatchNorm1d", "PerStepBatchNorm1d"]:
        assert name in dir(rnn) and getattr(rnn, name) is not None
    assert rnn.BatchNorm2d.__module__ == "refimpl.nn.batchnorm"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        rnn.Nope  # noqa: B018
