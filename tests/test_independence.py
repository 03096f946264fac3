"""refimpl must never call torch's normalization kernels, or comparing with torch is moot.

Every refimpl/*.py is parsed; every call is resolved through the file's imports to a
dotted name (``F.layer_norm`` with ``import torch.nn.functional as F`` becomes
``torch.nn.functional.layer_norm``); a call into torch whose last name is a norm kernel
or a norm module fails the test. A plain-text scan backs this up for spellings the
resolver might miss. The checker is itself tested on code that cheats.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "refimpl"

KERNELS = {
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "native_batch_norm",
    "native_layer_norm",
    "native_group_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_batch_norm_impl_index",
    "_batch_norm_with_update",
    "_fused_rms_norm",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "batch_norm_elemt",
    "batch_norm_stats",
    "batch_norm_gather_stats",
    "batch_norm_gather_stats_with_counts",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "batch_norm_update_stats",
    "local_response_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "LocalResponseNorm",
}
# Text that must not appear in code at all: torch's kernels under their usual spellings.
PATTERN = re.compile(
    r"\b(?:torch(?:\.nn)?(?:\.functional)?|F|nn|aten|ops\.aten)\s*\.\s*(?:"
    + "|".join(sorted(KERNELS, key=len, reverse=True))
    + r")\b\s*(?:\.\s*\w+\s*)?\("
)


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _torch_names(tree: ast.AST) -> set[str]:
    """Local names bound to torch things, also through plain assignment (``tnn = torch.nn``)."""
    imports = _imports(tree)
    return {local for local, full in imports.items() if full.split(".")[0] == "torch"}


def forbidden_calls(source: str) -> list[str]:
    """Calls in ``source`` that reach a torch normalization kernel or module."""
    tree = ast.parse(source)
    imports = _imports(tree)
    aliases = dict(imports)
    torch_locals = _torch_names(tree)
    # local = torch.<...> assignments make more torch aliases
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], _dotted(node.value)
            if isinstance(target, ast.Name) and value:
                root = value.split(".")[0]
                if root in torch_locals or root == "torch":
                    aliases[target.id] = aliases.get(root, root) + value[len(root) :]
                    torch_locals.add(target.id)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        root, _, rest = name.partition(".")
        full = aliases.get(root, root) + (f".{rest}" if rest else "")
        parts = full.split(".")
        if parts[0] == "torch" and any(p in KERNELS for p in parts[1:]):
            found.append(f"line {node.lineno}: {name}(...) -> {full}")
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            # getattr(torch.nn.functional, "batch_norm")
            literal = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            owner = _dotted(node.args[0]) or ""
            owner_root = owner.split(".")[0]
            if (
                literal
                and literal[0] in KERNELS
                and (owner_root == "torch" or owner_root in torch_locals)
            ):
                found.append(f"line {node.lineno}: getattr(..., {literal[0]!r})")
    for match in PATTERN.finditer(_code_only(source)):
        found.append(f"text: {match.group(0)}")
    return found


def _code_only(source: str) -> str:
    """Source with docstrings and comments blanked, so prose may name torch's kernels."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = ""
    return "\n".join(re.sub(r"#.*", "", line) for line in lines)


SOURCES = sorted(PACKAGE.rglob("*.py"))  # refimpl/nn/ is a package: its files too


def _rel(path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_there_are_sources_to_check():
    names = {_rel(p) for p in SOURCES}
    assert {"core.py", "functional.py", "nn/__init__.py", "nn/batchnorm.py", "backward.py"} <= names


# The benchmark times torch's kernel as the baseline refimpl is measured against, and
# torch's BatchNorm2d module as the unfused baseline of conv-BN fusion: those calls, once
# each, and nothing else, are allowed there. It never computes a refimpl result with them.
BASELINES = {"bench.py": ("torch.nn.functional.batch_norm", "torch.nn.BatchNorm2d")}


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_refimpl_never_calls_torch_normalization(path):
    found = forbidden_calls(path.read_text())
    for name in BASELINES.get(_rel(path), ()):
        baseline = [f for f in found if f.endswith(f"-> {name}")]
        assert len(baseline) == 1, found
        found = [f for f in found if f not in baseline and f != f"text: {name}("]
    assert found == []


CHEATS = {
    "full path": "import torch\ny = torch.nn.functional.batch_norm(x, m, v)\n",
    "F alias": "import torch.nn.functional as F\ny = F.layer_norm(x, (3,))\n",
    "from-import module": "from torch.nn import functional as F\ny = F.group_norm(x, 2)\n",
    "from-import function": "from torch.nn.functional import rms_norm as r\ny = r(x, (3,))\n",
    "torch namespace": "import torch\ny = torch.batch_norm(x, w, b, m, v, True, 0.1, 1e-5, 0)\n",
    "aten op": "import torch\ny = torch.ops.aten.native_layer_norm(x, [3], w, b, 1e-5)\n",
    "aten default": "import torch\ny = torch.ops.aten.native_batch_norm.default(x)\n",
    "nn module": "from torch import nn\nm = nn.BatchNorm2d(3)\n",
    "torch.nn module": "import torch\nm = torch.nn.LayerNorm(3)\n",
    "module alias": "import torch.nn as tnn\nm = tnn.InstanceNorm1d(3)\n",
    "assigned alias": "import torch\nfn = torch.nn.functional\ny = fn.instance_norm(x)\n",
    "getattr": "import torch\nfn = getattr(torch.nn.functional, 'batch_norm')\n",
    "torch._C": "import torch\ny = torch._C._nn.layer_norm(x)\n",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_checker_catches_cheats(name):
    assert forbidden_calls(CHEATS[name]), f"checker missed: {CHEATS[name]!r}"


def test_checker_allows_refimpl_own_functions_and_torch_types():
    # (The text scan rejects any ``F.layer_norm(``, so refimpl never calls its own
    # functional module ``F``: a reader should never have to guess which F it is.)
    fine = (
        "import torch\nfrom refimpl import functional\n"
        "y = functional.batch_norm(x, m, v)\n"
        "isinstance(m, torch.nn.BatchNorm2d)\n"
        '"""torch.nn.functional.batch_norm(x) in a docstring is prose"""\n'
    )
    assert forbidden_calls(fine) == []
