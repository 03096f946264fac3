"""Notebook hygiene: nbval can only verify what is stored executed and stable.

nbval silently skips cells whose stored execution_count is null, so an unexecuted
notebook would pass vacuously; these checks make that impossible, and keep out outputs
that would differ between runs (addresses, temp paths, timings) or that hide problems
(errors, warnings on stderr, progress bars).
"""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.notebooks import ROOT, code_cells, load, notebook_paths, source

NOTEBOOKS = notebook_paths()
IDS = [p.name for p in NOTEBOOKS]
# A cell whose output nbval does not compare ("relaxed"): timing cells, and experiment
# cells whose per-seed numbers move with the CPU code path; the latter must assert.
TIMING_MARK = "# NBVAL_IGNORE_OUTPUT"
SKIP_MARK = "# NBVAL_SKIP"
VOLATILE = {
    "memory address": re.compile(r"0x[0-9a-fA-F]{6,}"),
    "temporary path": re.compile(r"/tmp/|/var/folders/|\\AppData\\Local\\Temp"),
    "bare NumPy scalar repr": re.compile(r"np\.(float|int)\d+\("),
    "progress bar": re.compile(r"\d+%\|[#█▏▎▍▌▋▊▉ ]*\|"),
}
# A plot cell that does not end with `;` returns an object whose repr names an address or
# changes with the code; display_data from the inline backend ("<Figure size ...>") is fine.
RESULT_REPR = re.compile(r"<(Figure|matplotlib\.)[^>]*>|^\[<matplotlib")
TIMING_CODE = re.compile(r"\b(timeit|perf_counter|time\.time|process_time)\b")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def _text_outputs(cell: dict) -> list[tuple[str, str]]:
    """(output_type, text) of every textual output of a cell."""
    texts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            texts.append(("stream", "".join(out["text"])))
        elif "data" in out:
            plain = out["data"].get("text/plain", "")
            texts.append((out["output_type"], plain if isinstance(plain, str) else "".join(plain)))
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_code_cell_executed_in_order(path):
    counts = [c["execution_count"] for c in code_cells(load(path))]
    assert counts, f"{path.name} has no code cells"
    assert None not in counts, f"{path.name}: unexecuted cells (run `make notebooks`)"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: counts {counts} not 1..n"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_execution_timestamps(path):
    for i, cell in enumerate(code_cells(load(path)), start=1):
        assert "execution" not in cell.get("metadata", {}), (
            f"{path.name} cell {i}: execution timestamps stored (run `make notebooks`, which "
            "strips them)"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_errors_or_stderr(path):
    for i, cell in enumerate(code_cells(load(path)), start=1):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name} cell {i}: stored error output"
            if out["output_type"] == "stream":
                assert out["name"] != "stderr", (
                    f"{path.name} cell {i}: stderr output (warning or progress bar): "
                    f"{''.join(out['text'])[:200]!r}"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_volatile_text(path):
    for i, cell in enumerate(code_cells(load(path)), start=1):
        if source(cell).startswith(TIMING_MARK):
            continue
        for kind, text in _text_outputs(cell):
            for what, pattern in VOLATILE.items():
                assert not pattern.search(text), f"{path.name} cell {i}: {what} in output"
            if kind == "execute_result":
                assert not RESULT_REPR.search(text), (
                    f"{path.name} cell {i}: plot object repr stored (end the plot cell with ;)"
                )


def _asserts(src: str) -> bool:
    """Whether a cell asserts something: an `assert` statement, a `check(...)` /
    `check_table(...)` call (both raise beyond tolerance), or a `paired_verdict(...)` /
    `claim(...)` call (both raise when the verdict they state no longer holds)."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"check", "check_table", "paired_verdict", "claim"}:
                return True
    return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_relaxed_cells_time_or_assert(path):
    """nbval does not compare a `# NBVAL_IGNORE_OUTPUT` cell's output, so such a cell must
    either time code (its numbers are noise by nature) or assert the verdict it prints:
    otherwise the claim beside it would go unverified on every machine but the recorder's."""
    for i, cell in enumerate(code_cells(load(path)), start=1):
        src = source(cell)
        if TIMING_MARK in src:
            assert src.startswith(TIMING_MARK), f"{path.name} cell {i}: mark must be line 1"
            assert TIMING_CODE.search(src) or _asserts(src), (
                f"{path.name} cell {i}: output not compared, yet it neither times code nor "
                "asserts its verdict"
            )
        elif TIMING_CODE.search(src):
            pytest.fail(f"{path.name} cell {i}: times code but lacks {TIMING_MARK}")


def test_relaxed_cell_rule_catches_an_unasserted_table():
    assert not _asserts("print(accuracies)")
    assert _asserts("print(accuracies)\nassert accuracies['bn'] > accuracies['plain']")
    assert _asserts("refimpl.check('x', a, b)")
    assert _asserts("check_table([('x', a, b)])")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_skip_only_on_the_colab_install_cell(path):
    cells = code_cells(load(path))
    first = source(cells[0])
    assert first.startswith(SKIP_MARK) and "google.colab" in first, (
        f"{path.name}: the first code cell must be the Colab-only install cell"
    )
    for i, cell in enumerate(cells[1:], start=2):
        assert SKIP_MARK not in source(cell), f"{path.name} cell {i}: NBVAL_SKIP hides a check"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_install_cell_is_hidden_on_the_site(path):
    """The install cell stays first in the notebook (Colab runs it) but is not shown on the
    site, where it is noise at the top of every page (`remove-cell`, myst-nb's tag)."""
    tags = code_cells(load(path))[0].get("metadata", {}).get("tags", [])
    assert "remove-cell" in tags, f"{path.name}: run `python tests/colab_cell.py` to tag it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_install_url_matches_config(path):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"]
    first = source(code_cells(load(path))[0])
    urls = re.findall(r"git\+(https://[^\s\"'@]+)", first)
    assert urls == [url], f"{path.name}: Colab installs from {urls}, _config.yml says {url}"
    # with the `book` extra: the packages the notebooks import beyond refimpl's own
    assert f'"refimpl[book] @ git+{url}"' in first, (
        f"{path.name}: Colab must install refimpl[book] (run `python tests/colab_cell.py`)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_setup_called_early(path):
    second = source(code_cells(load(path))[1])
    assert "refimpl.setup(" in second, f"{path.name}: cell 2 must call refimpl.setup()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_one_title_and_python3_kernel(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    first_md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    assert source(first_md).startswith("# "), f"{path.name}: first markdown cell must be the H1"
    h1 = [
        line
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
        for line in source(c).splitlines()
        if line.startswith("# ")
    ]
    assert len(h1) == 1, f"{path.name}: {len(h1)} H1 titles"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_listed_in_toc(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"


def _markdown(nb: dict) -> str:
    return "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exercises_have_hidden_solutions(path):
    text = _markdown(load(path))
    labels = re.findall(r"`{3,}\{exercise\}\s*\n:label: (\S+)", text)
    assert labels, f"{path.name}: no exercises"
    for label in labels:
        opening = rf"`{{3,}}\{{solution\}} {re.escape(label)}\s*\n:class: dropdown"
        solution = re.search(opening, text)
        assert solution, f"{path.name}: exercise {label} has no hidden (dropdown) solution"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_ends_with_references(path):
    text = _markdown(load(path))
    assert "\n## References" in text or text.startswith("## References"), (
        f"{path.name}: no References section"
    )
    references = text.split("## References", 1)[1]
    assert "{cite}" in references, f"{path.name}: References section cites nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_notebook_has_a_figure(path):
    """Every chapter shows at least one figure, stored executed so the book renders it."""
    images = [
        out
        for cell in code_cells(load(path))
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{path.name}: no figure (no stored image/png output)"
