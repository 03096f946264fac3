"""Turn pending chapter mentions into links once the chapter's page exists.

Pages written before chapters 3-6 were in the tree name them in plain text followed by a
marker: ``Chapter 5 — Fusing batch norm into convolutions <!-- link: book/ch05_fusion -->``.
When ``book/ch05_fusion.md`` exists, this rewrites that to
``[Chapter 5 — Fusing batch norm into convolutions](ch05_fusion.md)`` (the text may span
lines). Idempotent; markers whose page does not exist yet are left alone.
Usage, from the repository root: ``python tests/resolve_pending_links.py``.
tests/test_glossary.py fails while a marker names a page that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"
# "Chapter N — title" (title without links or table bars), then the marker.
PENDING = re.compile(
    r"(?P<text>Chapter (?P<n>\d+) —[^<\[\]|]*?)(?P<space>\s*)<!-- link: book/(?P<name>[\w]+) -->"
)


def resolve(text: str) -> str:
    def link(match: re.Match) -> str:
        name = match["name"]
        if not (BOOK / f"{name}.md").exists() or not name.startswith(f"ch{int(match['n']):02d}"):
            return match[0]
        return f"[{match['text']}]({name}.md)"

    return PENDING.sub(link, text)


if __name__ == "__main__":
    for page in sorted(BOOK.glob("*.md")):
        old = page.read_text(encoding="utf-8")
        new = resolve(old)
        if new != old:
            page.write_text(new, encoding="utf-8")
            print(f"linked {page.name}")
