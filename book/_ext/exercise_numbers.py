"""Number exercises per chapter: "Exercise 5.3" is the third exercise of chapter 5.

sphinx-exercise numbers exercises with Sphinx's figure numbering (``numfig``). Without
numbered sections (the book numbers its chapters in their titles, "Chapter 5 — ..."), Sphinx
counts them across the whole book, so "Exercise 47" opened notebook 15. After Sphinx has
assigned its numbers (in reading order), this renumbers them as (chapter, n): the chapter
of a page is that of the nearest ``book/chNN_*`` page above it in the table of contents
(its notebooks are its sections); pages outside any chapter (the first notebook, "Start
here") are chapter 0. With ``exercise_number_by = "page"`` the first number is instead the
page's own number (``notebooks/15_...`` -> "Exercise 15.1"). Titles, "Solution to Exercise
5.3" and ``{numref}`` links all read these numbers (sphinx-exercise's ``get_node_number``
and Sphinx's own numref).
"""

from __future__ import annotations

import re

CHAPTER_DOC = re.compile(r"book/ch(\d+)_[^/]*")
PAGE_NUMBER = re.compile(r"(?:.*/)?(\d+)_[^/]*")


def chapter_of(docname: str, parents: dict[str, str]) -> int:
    seen = set()
    while docname and docname not in seen:
        seen.add(docname)
        match = CHAPTER_DOC.fullmatch(docname)
        if match:
            return int(match.group(1))
        docname = parents.get(docname)
    return 0


def renumber_exercises(app, env) -> list[str]:
    parents: dict[str, str] = {}
    for parent, children in env.toctree_includes.items():
        for child in children:
            parents.setdefault(child, parent)
    found = []  # (Sphinx's book-wide number, docname, node id)
    for docname, numbers in env.toc_fignumbers.items():
        for node_id, number in numbers.get("exercise", {}).items():
            found.append((number, docname, node_id))
    counters: dict[int, int] = {}
    changed = set()
    for _number, docname, node_id in sorted(found):
        if app.config.exercise_number_by == "page":
            match = PAGE_NUMBER.fullmatch(docname)
            chapter = int(match.group(1)) if match else 0
        else:
            chapter = chapter_of(docname, parents)
        counters[chapter] = counters.get(chapter, 0) + 1
        new = (chapter, counters[chapter])
        if env.toc_fignumbers[docname]["exercise"][node_id] != new:
            env.toc_fignumbers[docname]["exercise"][node_id] = new
            changed.add(docname)
    return sorted(changed)


def setup(app):
    app.add_config_value("exercise_number_by", "chapter", "env", [str])
    # After Sphinx's TocTreeCollector (priority 500) has assigned the book-wide numbers.
    app.connect("env-get-updated", renumber_exercises, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
