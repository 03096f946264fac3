"""The glossary is bilingual and every term points to where the book defines it."""

from __future__ import annotations

import re

import pytest

from tests.test_claims import BOOK, MD_LINK, anchors_of

GLOSSARY = BOOK / "glossary.md"
CJK = re.compile(r"[\u4e00-\u9fff]")
# A chapter page that is not in this tree yet is named in plain text, followed by
# `<!-- link: book/chNN_x -->`, until the page exists and the text becomes a link
# (`python tests/resolve_pending_links.py` does that).
PENDING = re.compile(r"<!-- link: (book/[\w/]+) -->")


def entries() -> list[tuple[list[str], str]]:
    """(term lines, definition) of every entry of every ```{glossary} block."""
    found = []
    for block in re.findall(r"```\{glossary\}\n(.*?)```", GLOSSARY.read_text(), re.DOTALL):
        for chunk in re.split(r"\n\s*\n", block.strip("\n")):
            lines = chunk.splitlines()
            terms = [line for line in lines if line and not line.startswith(" ")]
            definition = " ".join(line.strip() for line in lines if line.startswith(" "))
            found.append((terms, definition))
    return found


ENTRIES = entries()


def test_at_least_35_terms():
    assert len(ENTRIES) >= 35, f"{len(ENTRIES)} glossary entries"


@pytest.mark.parametrize("terms, definition", ENTRIES, ids=[t[0] for t, _ in ENTRIES])
def test_entry_is_bilingual_and_linked(terms, definition):
    english = [t for t in terms if not CJK.search(t)]
    chinese = [t for t in terms if CJK.search(t)]
    assert english and chinese, f"{terms}: give the term in English and in Chinese"
    links, pending = MD_LINK.findall(definition), PENDING.findall(definition)
    assert links or pending, f"{terms[0]}: link to where the book defines it"
    for target in links:
        path, _, anchor = target.partition("#")
        page = (BOOK / path).resolve()
        assert page.is_file(), f"{terms[0]}: {target} does not exist"
        if anchor:
            assert anchor in anchors_of(page), f"{terms[0]}: no anchor {anchor!r} in {path}"
    for name in pending:
        # Once the chapter page exists, the plain-text mention must become a real link.
        assert not (BOOK.parent / f"{name}.md").exists(), (
            f"{terms[0]}: {name}.md exists now; turn the plain text into a link"
        )


@pytest.mark.parametrize("page", sorted(BOOK.glob("*.md")), ids=lambda p: p.name)
def test_no_pending_link_to_a_page_that_exists(page):
    for name in PENDING.findall(page.read_text(encoding="utf-8")):
        assert not (BOOK.parent / f"{name}.md").exists(), (
            f"{page.name}: {name}.md exists now; make the text before "
            f"`<!-- link: {name} -->` a link to it and drop the comment"
        )
