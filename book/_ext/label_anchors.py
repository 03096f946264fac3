"""Let a markdown link name a MyST label as its anchor: ``[text](../notebooks/x.ipynb#label)``.

MyST resolves ``doc#anchor`` links only against heading slugs (``myst_heading_anchors``),
so a link to a ``(label)=`` target in another document warns "local id not found", and
with ``-W`` fails the build. The claims ledger and the glossary point at evidence by
label; after all documents are read, this adds every label to its document's slug table,
where MyST's resolver finds it (heading slugs keep priority).
"""

from __future__ import annotations


def add_labels_to_slugs(app, env):
    std = env.get_domain("std")
    for name, (docname, labelid, sectname) in std.labels.items():
        if docname in env.metadata and labelid:
            slugs = env.metadata[docname].setdefault("myst_slugs", {})
            slugs.setdefault(name, (0, labelid, sectname))
    return []


def setup(app):
    app.connect("env-updated", add_labels_to_slugs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
