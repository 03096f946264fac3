"""Open a quotation that follows a raw ``<br>`` with an opening quote mark.

The claims ledger writes each claim as the seed's words, a line break and the translation:
``“…”<br>"…"``. Sphinx's smart quotes turn the ``"`` after the break into a *closing*
mark, ”…”, because they read the ``<br>`` (a raw HTML node) as nothing and see the
Chinese quote's closing ” right before it. After smart quotes have run (every transform
is done when ``doctree-read`` fires), a text that starts with ” straight after a raw
``<br>`` gets “ instead.
"""

from __future__ import annotations

from docutils import nodes


def fix_quotes_after_breaks(app, doctree):
    for raw in doctree.findall(nodes.raw):
        if raw.get("format") != "html" or raw.astext().strip().lower() not in ("<br>", "<br/>"):
            continue
        following = raw.next_node(descend=False, siblings=True)
        if isinstance(following, nodes.Text) and following.startswith("\u201d"):
            following.parent.replace(following, nodes.Text("\u201c" + following[1:]))


def setup(app):
    app.connect("doctree-read", fix_quotes_after_breaks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
