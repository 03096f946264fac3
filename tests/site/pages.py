"""Which pages the site must have: every file listed in _toc.yml, plus Sphinx's own pages."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.notebooks import ROOT

HTML = ROOT / "_build" / "html"


def toc_files() -> list[str]:
    """Every `file:` (and the root) of _toc.yml, in reading order, without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return [str(Path(f).with_suffix("")) for f in files]


def html_pages() -> list[str]:
    """Paths, relative to _build/html, of the toc pages and of index, search and genindex."""
    pages = [f"{f}.html" for f in toc_files()]
    return pages + ["index.html", "search.html", "genindex.html"]
