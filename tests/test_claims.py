"""The claims ledger (book/claims.md) is complete and every row points at its evidence.

Each table row names a source (a seed, by short name, cited in references.bib), quotes a
claim in the seed's own Chinese and in translation, gives a verdict in bold from the fixed
set, and links to the evidence: a book page, or a notebook *section or cell* (a
notebook link carries an anchor: a heading's slug or a MyST label). Every seed appears in
the ledger, and every row is bound to the one notebook cell that asserts *its* verdict:
the row links a label that sits right above a cell calling
`refimpl.claim("<label>", "<verdict>", {...})` (so nbval re-checks it in both
passes). The built site's browser check then confirms that the anchors resolve.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.notebooks import ROOT, load, source
from tests.test_notebook_hygiene import TIMING_CODE, TIMING_MARK

BOOK = ROOT / "book"
LEDGER = BOOK / "claims.md"
VERDICTS = {"holds", "wrong", "half right", "not shown"}
# The five source articles (DESIGN.md), by the short name the ledger's first column uses.
# The files live outside the repository (shared/seeds/); the ledger cites each in
# references.bib, and the tests below compare them with that folder when it is present.
SOURCES = {
    "ScienceNet blog": "000_2c606b915d172366.txt",
    "x-jeff's notes": "001_92237ed85e521a1f.txt",
    "d2l repost": "002_efd2d21cc74e33d9.txt",
    "Zhihu answers": "003_61c2397c455563fd.txt",
    "BN's role": "004_f6a927ca99edbfe8.txt",
}
SEEDS = set(SOURCES.values())
# Chapters 7 on (transformers, small batches) test claims from the literature: such a row
# names its source by citation, {cite:t}`key` with key in references.bib, and quotes the
# claim in English ("...", the paper's words or a paraphrase in [brackets]); no Chinese.
CITED_SOURCE = re.compile(r"\{cite(?::[tp])?\}`([A-Za-z0-9_-]+)`")
SEED_DIRS = [base / "shared" / "seeds" for base in (ROOT, ROOT.parent, ROOT.parent.parent)]

MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REF_ROLE = re.compile(r"\{ref\}`(?:[^`<]*<([^>]+)>|([^`]+))`")
LABEL = re.compile(r"^\(([^)\s]+)\)=\s*$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def cells(line: str) -> list[str]:
    """The cells of a markdown table row; `\\|` inside a cell is not a separator."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def ledger_rows() -> list[tuple[int, list[str]]]:
    """(line number, cells) of every claim row: table rows minus headers and rules."""
    rows = []
    for number, line in enumerate(LEDGER.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.lstrip().startswith("|"):
            continue
        row = cells(line)
        if row[0] == "source" or all(re.fullmatch(r":?-{3,}:?", c) for c in row):
            continue
        rows.append((number, row))
    return rows


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return "\n\n".join(
            "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"
        )
    return path.read_text(encoding="utf-8")


def slug(title: str) -> str:
    """MyST's heading anchor (myst_heading_anchors): GitHub's slug of the heading's text and
    inline code, without its math."""
    text = re.sub(r"\$[^$]*\$", "", title).replace("`", "")
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", text.lower().replace(" ", "-"))


def anchors_of(path: Path) -> set[str]:
    text = markdown_of(path)
    return set(LABEL.findall(text)) | {slug(h) for h in HEADING.findall(text)}


def all_labels() -> set[str]:
    pages = list(BOOK.glob("*.md")) + list((ROOT / "notebooks").glob("*.ipynb"))
    return {label for page in pages for label in LABEL.findall(markdown_of(page))}


ROWS = ledger_rows()
IDS = [f"line{number}" for number, _ in ROWS]


def test_the_ledger_has_rows():
    assert len(ROWS) >= 10


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=IDS)
def test_row_shape_seed_and_verdict(row):
    assert len(row) == 4, f"a row has 4 cells (source | claim | verdict | evidence), got {row}"
    source, claim, verdict, _ = row
    cited = CITED_SOURCE.fullmatch(source)
    if cited:
        bib = (BOOK / "references.bib").read_text(encoding="utf-8")
        assert re.search(rf"@\w+\{{{cited.group(1)},", bib), f"{source}: not in the bib"
        assert claim.startswith('"') and "<br>" not in claim, (
            f"a cited source's claim is quoted in English, \"...\": {claim[:60]}"
        )
    else:
        assert source in SOURCES, (
            f"unknown source {source!r}: one of {sorted(SOURCES)} or {{cite:t}}`key`"
        )
        chinese, sep, english = claim.partition("<br>")
        assert sep and chinese.startswith("“") and chinese.endswith("”"), (
            f"the claim cell starts with the seed's own words in “…”, then <br>: {claim[:60]}"
        )
        assert english.startswith('"'), f"then the translation, quoted: {english[:60]}"
    bold = re.match(r"\*\*([^*]+)\*\*", verdict)
    assert bold and bold.group(1) in VERDICTS, (
        f"verdict must start with one of {sorted(VERDICTS)} in bold: {verdict[:60]!r}"
    )
    why = verdict[bold.end() :].strip(" :;,.-—")
    assert len(why.split()) >= 3, f"the verdict needs a one-sentence why: {verdict!r}"


def _seed_folder() -> Path | None:
    return next((f for f in SEED_DIRS if f.is_dir()), None)


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=IDS)
def test_the_chinese_quote_is_the_seeds_own_words(row):
    """A reader of the original can find every quoted piece in the seed, verbatim: the
    pieces between omission marks ([...], ……) and between two quoted passages (”;“)."""
    if row[0] not in SOURCES:
        pytest.skip("a published source: quoted in English, checked against the bib")
    folder = _seed_folder()
    if folder is None:
        pytest.skip("no shared/seeds folder next to the repository")
    # whitespace (line breaks, no-break spaces) is compared collapsed: a table row is one line
    text = " ".join((folder / SOURCES[row[0]]).read_text(encoding="utf-8").split())
    chinese = row[1].partition("<br>")[0].removeprefix("“").removesuffix("”")
    pieces = re.split(r"\[\.\.\.\]|……|”;“", chinese.replace("\\|", "|").replace("\\$", "$"))
    missing = [p for p in (" ".join(x.split()) for x in pieces) if p and p not in text]
    assert not missing, f"not in {SOURCES[row[0]]}: {missing}"


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=IDS)
def test_row_links_to_its_evidence(row):
    evidence = row[-1]
    targets = MD_LINK.findall(evidence)
    labels = [a or b for a, b in REF_ROLE.findall(evidence)]
    assert targets or labels, f"no link to the evidence: {evidence!r}"
    for target in targets:
        path, _, anchor = target.partition("#")
        page = (BOOK / path).resolve()
        assert page.is_file() and page.suffix in {".md", ".ipynb"}, f"{target}: no such page"
        if page.suffix == ".ipynb":
            assert anchor, f"{target}: link the evidence's section or cell (add #anchor)"
        if anchor:
            assert anchor in anchors_of(page), f"{target}: no heading or label {anchor!r} there"
    known = all_labels()
    for label in labels:
        assert label in known, f"{{ref}} to {label!r}, which no page or notebook defines"


def test_the_seed_list_matches_the_seed_folder():
    folder = _seed_folder()
    if folder is None:
        pytest.skip("no shared/seeds folder next to the repository")
    assert {p.name for p in folder.glob("*.txt")} == SEEDS


def test_every_source_is_in_the_ledger_and_cited():
    named = {row[0] for _, row in ROWS}
    assert set(SOURCES) <= named, f"sources with no row: {sorted(set(SOURCES) - named)}"
    text = LEDGER.read_text(encoding="utf-8")
    bib = (BOOK / "references.bib").read_text(encoding="utf-8")
    for name, seed in SOURCES.items():
        key = f"seed{seed[:3]}"
        assert re.search(rf"@misc\{{{key},", bib), f"{name}: no @misc{{{key}, ...}} in the bib"
        assert f"{{cite}}`{key}`" in text, f"{name}: the ledger's source list does not cite {key}"
    assert "shared/" not in text, "the site never names a folder that is not in the repository"


FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _labels_in_markdown(text: str) -> list[str]:
    """The `(name)=` labels of a markdown cell, outside fenced code blocks."""
    found, fence = [], None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if opening:
            mark = opening.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        label = LABEL.match(line)
        if fence is None and label:
            found.append(label.group(1))
    return found


@dataclass
class ClaimCell:
    """A `claim(label, verdict, {...})` call in a notebook code cell."""

    notebook: str
    cell: int  # index among the notebook's cells
    label: str
    verdict: str
    labels_above: list[str]  # labels in the markdown between the previous code cell and this
    checks_computed: bool  # the checks dict has at least one non-literal value
    executed: bool


@dataclass
class TimingCell:
    notebook: str
    cell: int
    labels_above: list[str]


def _claim_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name != "claim" or len(node.args) < 2:
            continue
        label, verdict = node.args[0], node.args[1]
        if not (isinstance(label, ast.Constant) and isinstance(verdict, ast.Constant)):
            continue
        checks = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg == "checks":
                checks = kw.value
        computed = isinstance(checks, ast.Dict) and any(
            not isinstance(v, ast.Constant) for v in checks.values
        )
        yield str(label.value), str(verdict.value), computed


def notebook_evidence(paths=None) -> tuple[list[ClaimCell], list[TimingCell]]:
    """Every claim call, and every timing cell, of the notebooks, with the labels above."""
    claims, timings = [], []
    for path in paths or sorted((ROOT / "notebooks").glob("*.ipynb")):
        pending: list[str] = []
        for index, cell in enumerate(load(path)["cells"]):
            text = source(cell)
            if cell["cell_type"] == "markdown":
                pending += _labels_in_markdown(text)
                continue
            if cell["cell_type"] != "code":
                continue
            if text.startswith(TIMING_MARK) and TIMING_CODE.search(text):
                timings.append(TimingCell(path.name, index, pending))
            try:
                tree = ast.parse(text)
            except SyntaxError:  # cell magics
                tree = ast.Module(body=[], type_ignores=[])
            for label, verdict, computed in _claim_calls(tree):
                executed = cell.get("execution_count") is not None
                claims.append(
                    ClaimCell(path.name, index, label, verdict, pending, computed, executed)
                )
            pending = []
    return claims, timings


CLAIMS, TIMINGS = notebook_evidence()


def verdict_of(row: list[str]) -> str:
    bold = re.match(r"\*\*([^*]+)\*\*", row[2])
    return bold.group(1) if bold else ""


def row_labels(row: list[str]) -> list[str]:
    return [a or b for a, b in REF_ROLE.findall(row[-1])]


def test_claim_labels_are_unique():
    labels = [c.label for c in CLAIMS]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    assert not repeated, f"claim labels used by more than one claim(...) call: {repeated}"


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=IDS)
def test_every_row_is_bound_to_the_cell_that_asserts_its_verdict(row):
    """Every ledger row links (by label) the one notebook cell that asserts *its* verdict.

    The rule: exactly one of the row's `{ref}` labels is a claim label, that is, a label
    that sits right above (in the markdown since the previous code cell) a code cell
    calling `claim("<label>", "<verdict>", {...})`; the call's verdict is the row's, its
    checks are computed in the cell (not literals), and the cell is stored executed. nbval
    re-runs the cell in both passes, so when a check behind the row stops being true, the
    build stops.

    One exception: a row whose verdict rests on a timing binds to a timing cell (`#
    NBVAL_IGNORE_OUTPUT` and timing code) instead: timings are printed as ratios measured
    in one run, never asserted (they vary between machines and CPU code paths).
    """
    labels = row_labels(row)
    by_label = {c.label: c for c in CLAIMS}
    bound = [by_label[x] for x in labels if x in by_label]
    if not bound:
        timed = [t for t in TIMINGS if set(t.labels_above) & set(labels)]
        assert timed, (
            f"the row links no claim cell: none of {labels} labels a cell that calls "
            f"claim(label, verdict, ...) (row verdict {row[2][:70]!r})"
        )
        return
    assert len(bound) == 1, f"the row links several claim cells: {[c.label for c in bound]}"
    c = bound[0]
    assert c.label in c.labels_above, (
        f"{c.notebook} cell {c.cell}: the label {c.label!r} must sit right above its claim cell"
    )
    assert c.verdict == verdict_of(row), (
        f"{c.notebook} cell {c.cell}: claim {c.label!r} asserts {c.verdict!r}, "
        f"the ledger states {verdict_of(row)!r}"
    )
    assert c.checks_computed, f"{c.notebook} cell {c.cell}: claim {c.label!r} checks only literals"
    assert c.executed, f"{c.notebook} cell {c.cell}: the claim cell is not stored executed"


def test_every_claim_cell_is_a_ledger_row():
    linked = [x for _, row in ROWS for x in row_labels(row)]
    orphans = [f"{c.notebook}:{c.label}" for c in CLAIMS if c.label not in linked]
    assert not orphans, f"claim(...) calls that no ledger row links: {orphans}"
    twice = sorted({c.label for c in CLAIMS if linked.count(c.label) > 1})
    assert not twice, f"claim labels linked by more than one ledger row: {twice}"


def test_the_binding_rule_on_a_small_notebook(tmp_path):
    def md(text):
        return {"cell_type": "markdown", "metadata": {}, "source": text}

    def code(text, count=1):
        return {"cell_type": "code", "metadata": {}, "outputs": [], "source": text,
                "execution_count": count}

    nb = {
        "cells": [
            md("# Title\n\n(row-a)=\n(row-b)=\nThe verdicts."),
            code('claim("row-a", "holds", {"x": t > 2})\nclaim("row-b", "wrong", {"y": True})'),
            md("```\n(fenced)=\n```\n(row-c)="),
            code("print(1)"),
            code('refimpl.claim("row-c", "not shown", {"z": r.verdict == "n"})', count=None),
            md("(speed)="),
            code("# NBVAL_IGNORE_OUTPUT\nstart = time.perf_counter()"),
        ]
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    claims, timings = notebook_evidence([path])
    got = {c.label: (c.verdict, c.labels_above, c.checks_computed, c.executed) for c in claims}
    assert got == {
        "row-a": ("holds", ["row-a", "row-b"], True, True),
        "row-b": ("wrong", ["row-a", "row-b"], False, True),  # a literal check is not evidence
        "row-c": ("not shown", [], True, False),  # its label is above another cell
    }
    assert [t.labels_above for t in timings] == [["speed"]]
