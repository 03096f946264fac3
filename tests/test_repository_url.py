"""The repository URL has one source, _config.yml's `repository.url` (and `.branch`).

Every place that names the repository must name that one: the README's and how_to_use.md's
`git clone` lines (and the folder they `cd` into), the README's Colab link, pyproject.toml's
`[project.urls]`, and the first code cell of every notebook (Colab installs refimpl from
it). Beyond those, any GitHub or Colab link anywhere in the book's text that shares the
repository's owner or name must be exactly the repository: a renamed or moved repository,
a fork's URL or a typo fails here instead of in a reader's terminal.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]
URL = CONFIG["url"]
BRANCH = CONFIG["branch"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# https://github.com/OWNER/NAME, nothing after it (no .git, no trailing slash).
_m = re.fullmatch(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)", URL)
OWNER, NAME = _m.groups() if _m else (None, None)

# GitHub repository references in any of the forms the book's text uses.
_PART = r"[A-Za-z0-9_.-]+"
REFERENCES = [
    re.compile(rf"github\.com/({_PART})/({_PART})"),
    re.compile(rf"colab\.research\.google\.com/github/({_PART})/({_PART})"),
    re.compile(rf"raw\.githubusercontent\.com/({_PART})/({_PART})"),
    re.compile(rf"({_PART})\.github\.io/({_PART})"),
]
TEXT_SUFFIXES = {".md", ".ipynb", ".yml", ".yaml", ".toml", ".bib", ".txt", ".cfg", ".py"}
SKIP_DIRS = {".git", ".venv", "_build", "node_modules", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".hypothesis", ".ipynb_checkpoints"}


def text_files() -> list[Path]:
    """The repository's text files, without the virtual environment and build outputs."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix in TEXT_SUFFIXES]
    return sorted(found)


def _source(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def test_config_url_is_a_plain_github_repository_url():
    assert OWNER and NAME, (
        f"_config.yml repository.url must read https://github.com/OWNER/NAME, not {URL!r}"
    )
    assert not NAME.endswith(".git"), "repository.url: leave out the .git suffix"


@pytest.mark.parametrize("page", ["README.md", "book/how_to_use.md"])
def test_clone_instructions_name_the_repository(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert f"git clone {URL}\n" in text, f"{page}: no `git clone {URL}` line"
    assert f"cd {NAME}\n" in text, f"{page}: `git clone` makes the folder {NAME}; cd into it"


def test_readme_colab_link_names_the_repository_and_branch():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    link = f"https://colab.research.google.com/github/{OWNER}/{NAME}/blob/{BRANCH}/notebooks/"
    assert link in text, f"README.md: the Colab link must start {link}"


def test_pyproject_repository_url():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project.get("urls", {}).get("Repository") == URL, (
        f"pyproject.toml: [project.urls] Repository must be {URL}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_installs_from_the_repository(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next(_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert f"git+{URL}" in first, (
        f"{path.name}: the first code cell must install from git+{URL} "
        "(run `python tests/colab_cell.py`)"
    )


def test_every_reference_to_the_repository_is_exact():
    wrong = []
    for path in text_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in REFERENCES:
            for m in pattern.finditer(text):
                owner, name = m.group(1), m.group(2).rstrip(".").removesuffix(".git")
                related = owner.lower() == OWNER.lower() or name.lower() == NAME.lower()
                if related and (owner, name) != (OWNER, NAME):
                    line = text.count("\n", 0, m.start()) + 1
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not wrong, f"references that are not {OWNER}/{NAME} (_config.yml):\n" + "\n".join(
        wrong
    )
