"""Every symbol the book writes in math is on the notation page, with one meaning.

A *symbol* here is a letter (Latin or Greek) together with its typeface and accent:
`x`, `\\hat x`, `\\mathbf W`, `\\mathcal B` are four symbols. A prime marks a variant of
the same symbol (`W'`). Subscripts are symbols too (`x_{nchw}` uses x, n, c, h and w),
but a letter indexed by a text label is a symbol of its own (`t_{\\text{paired}}` is not
`t`); other text (`\\operatorname{sd}`) is not a symbol. The test reads the symbol
column of the tables in `book/notation.md` and fails on any page whose math uses a symbol
that no row declares, so a new symbol cannot enter the book without a line on the
notation page that says what it means. Two rows may not declare the same bare symbol
(one letter, nothing attached): that would give it two meanings.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from tests.notebooks import notebook_paths
from tests.test_claims import BOOK, markdown_of

NOTATION = BOOK / "notation.md"

# Commands that are operators, spacing or layout, not symbols with a meaning of their own.
LAYOUT = set(
    r"""frac tfrac dfrac sqrt sum prod cdot cdots dots ldots vdots ddots times div pm mp
    left right big Big bigl bigr Bigl Bigr bigg Bigg quad qquad le leq ge geq ne neq approx
    equiv sim propto ll gg in notin to mapsto rightarrow leftarrow Rightarrow
    iff implies mid lvert rvert lVert rVert langle rangle lfloor rfloor lceil rceil max min
    log ln exp lim sup inf arg top infty partial nabla odot otimes circ star prime
    textstyle displaystyle scriptstyle boxed underbrace overbrace not setminus cup cap
    subset subseteq forall exists bmod mod colon vert Vert tanh sin cos ast
    """.split()
)
TYPEFACES = {"mathbf": "bf", "boldsymbol": "bf", "bm": "bf", "mathcal": "cal", "mathbb": "bb"}
ACCENTS = {"hat": "hat", "widehat": "hat", "bar": "bar", "overline": "bar", "tilde": "tilde",
           "widetilde": "tilde", "dot": "dot"}
LABELS = ("text", "mathrm", "operatorname", "textbf", "textit", "mathsf", "mathit", "texttt",
          "label", "tag", "begin", "end")

MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", re.DOTALL)
# Code is not math: fenced code blocks (not MyST directives such as ```{exercise}, whose
# bodies are text) and inline code.
CODE = re.compile(r"(`{3,})(?!\{)[^\n]*\n.*?\1|`[^`\n]*`", re.DOTALL)
LABEL_ARG = re.compile(r"\\(?:" + "|".join(LABELS) + r")\s*\{[^{}]*\}")
# A typeface or accent and its argument: {braced}, \\command or one character.
DECORATED = re.compile(
    r"\\(" + "|".join({*TYPEFACES, *ACCENTS}) + r")(?![A-Za-z])\s*"
    r"(?:\{([^{}]*)\}|(\\[A-Za-z]+)|([A-Za-z0-9]))"
)
# A symbol with a text label as its index is a symbol of its own: t_{\text{paired}} is not t.
TEXT_INDEXED = re.compile(
    r"(@[^@]+@|\\[A-Za-z]+|[A-Za-z])(?:\^\{?\d\}?)?\s*([_^])\s*"
    r"(?:\{\s*\\(?:text|mathrm)\s*\{([^{}]*)\}\s*\}|\\(?:text|mathrm)\s*\{([^{}]*)\})"
)
TOKEN = re.compile(r"@[^@]+@|\\[A-Za-z]+|[A-Za-z]")


def symbols(tex: str) -> set[str]:
    """The symbols (letters with typeface, accent and text label) that a piece of TeX uses."""

    def mark(match: re.Match) -> str:
        command, braced, macro, letter = match.groups()
        kind = TYPEFACES.get(command) or ACCENTS[command]
        argument = braced if braced is not None else macro or letter
        inner = symbols(argument) or ({argument.strip()} if argument.strip().isdigit() else set())
        return " ".join(f"@{kind} {base}@" for base in sorted(inner)) or " "

    while DECORATED.search(tex):  # innermost first: \hat{\mathbf x} -> "hat bf x"
        tex = DECORATED.sub(mark, tex)

    def label(match: re.Match) -> str:
        base, position, braced, bare = match.groups()
        return f"@{base.strip('@').lstrip(chr(92))}{position}{(braced or bare).strip()}@"

    tex = LABEL_ARG.sub(" ", TEXT_INDEXED.sub(label, tex))
    found = set()
    for token in TOKEN.findall(tex):
        if token.startswith("@"):
            found.add(token.strip("@"))
        elif token.startswith("\\"):
            if token[1:] not in LAYOUT:
                found.add(token[1:])  # a Greek letter, or a command LAYOUT does not list
        else:
            found.add(token)
    return found


def math_of(markdown: str) -> list[str]:
    markdown = CODE.sub(" ", markdown)
    blocks = re.findall(r"```\{math\}[^\n]*\n(.*?)```", markdown, re.DOTALL)
    return blocks + [a or b for a, b in MATH.findall(markdown)]


# One symbol and nothing else: `g`, `\\hat g`, `\\mathbf{W}`; not `g_j`, `W'` or `sd(d)`.
BARE = re.compile(r"(\\(" + "|".join({*TYPEFACES, *ACCENTS}) + r")\s*)?\{?\\?[A-Za-z]+\}?")


def declared() -> tuple[set[str], dict[str, list[str]]]:
    """All symbols in the first column of the notation tables, and the rows that declare
    each *bare* symbol (a piece that is one symbol, no sub- or superscript)."""
    every, rows_of = set(), defaultdict(list)
    for line in NOTATION.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| $"):
            continue
        cell = line.split("|")[1].strip()
        for piece in math_of(cell):
            found = symbols(piece)
            every |= found
            if len(found) == 1 and BARE.fullmatch(piece.strip()):
                rows_of[found.pop()].append(cell)
    return every, rows_of


def pages() -> list[tuple[str, str]]:
    paths = notebook_paths() + [p for p in sorted(BOOK.glob("*.md")) if p != NOTATION]
    return [(path.name, markdown_of(path)) for path in paths]


DECLARED, ROWS_OF = declared()
PAGES = pages()


def test_the_tokenizer_sees_typeface_accent_and_subscripts():
    assert symbols(r"\hat\mu_{\mathcal B} + \mathbf W_{o,c,k}") == {
        "hat mu", "cal B", "bf W", "o", "c", "k"}
    assert symbols(r"\mu_{\text{pad}} = \frac{1}{m}\sum_j x_j") == {"mu_pad", "m", "j", "x"}
    assert symbols(r"\sigma^2_{\text{run}} + t_\text{paired} + \mathbf W_{\text{out}}") == {
        "sigma_run", "t_paired", "bf W_out"}
    assert symbols(r"\hat{x}") == {"hat x"} and symbols(r"\sqrt{\sigma^2}") == {"sigma"}


def test_the_table_is_read_and_an_unknown_symbol_is_caught():
    assert {"N", "n", "mu", "sigma", "gamma", "beta", "cal B", "bf W"} <= DECLARED
    assert symbols(r"\chi_n + \mathcal Q") - DECLARED == {"chi", "cal Q"}


@pytest.mark.parametrize("name, text", PAGES, ids=[name for name, _ in PAGES])
def test_every_symbol_is_on_the_notation_page(name, text):
    used = set().union(*(symbols(m) for m in math_of(text)), set())
    missing = sorted(used - DECLARED)
    assert not missing, (
        f"{name} writes {missing} in math, and book/notation.md has no row for them: "
        "use the symbol the notation page gives for that meaning, or add a row"
    )


def test_no_symbol_is_declared_in_two_rows():
    twice = {symbol: rows for symbol, rows in ROWS_OF.items() if len(set(rows)) > 1}
    assert not twice, f"symbols declared by more than one row (two meanings): {twice}"


def test_every_declared_symbol_is_used_somewhere():
    """A row for a symbol no page writes any more is a stale row (renamed, or removed)."""
    used = set().union(*(symbols(m) for _, text in PAGES for m in math_of(text)))
    assert not DECLARED - used, f"declared but used on no page: {sorted(DECLARED - used)}"
