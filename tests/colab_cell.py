"""The canonical Colab cell, and a script that makes every notebook's first code cell it.

Usage, from the repository root: ``python tests/colab_cell.py [NOTEBOOK ...]`` (default:
every notebook). Idempotent: a notebook whose first code cell already is the canonical
cell is not rewritten. Only that cell's source and its `remove-cell` tag (the site hides
it) change; its outputs, execution count and other metadata are kept (nbval skips the
cell, and `make notebooks` would re-run it as a no-op).

The cell installs ``refimpl[book]``: refimpl plus the packages the notebooks import
(pyproject.toml's ``book`` extra), from the repository that _config.yml names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
# PEP 508 form `name[extra] @ url`: pip accepts extras on a direct reference (the older
# `git+URL#egg=refimpl[book]` fragment form is deprecated in pip).
INSTALL_SPEC = f"refimpl[book] @ git+{REPOSITORY_URL}"

COLAB_CELL = f"""\
# NBVAL_SKIP
# Colab only: install refimpl and the packages the notebooks use (its `book` extra) from
# the book's repository. A no-op anywhere else.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "{INSTALL_SPEC}"], check=True)"""


# Hidden on the site (myst-nb drops the cell from the page); Colab and nbval still see it.
SITE_TAG = "remove-cell"


def _source(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def rewrite(path: Path) -> bool:
    """Make the first code cell of ``path`` the canonical cell; True if the file changed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    tags = first.setdefault("metadata", {}).setdefault("tags", [])
    if _source(first) == COLAB_CELL and SITE_TAG in tags:
        return False
    if "google.colab" not in _source(first):
        raise SystemExit(f"{path}: first code cell is not a Colab install cell; not touching it")
    first["source"] = COLAB_CELL.splitlines(keepends=True)
    if SITE_TAG not in tags:
        tags.append(SITE_TAG)
    # The format `make notebooks` leaves (tests/strip_execution_metadata.py).
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{'rewrote' if rewrite(path) else 'unchanged'} {path.name}")
