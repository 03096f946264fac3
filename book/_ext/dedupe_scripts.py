"""Drop repeated inline <script> blocks from each page.

Sphinx 7.4 records an inline script that an extension adds after the builder starts (as
sphinx-thebe and sphinx-togglebutton do) twice: in the builder with filename None and in
its registry with filename '', which the builder's own duplicate check tells apart. So the
same inline script lands twice in every page, and a repeated `const THEBE_JS_URL = ...`
is a JavaScript SyntaxError in the browser. Here, scripts are the same when their file
(None and '' alike) and attributes (the inline body included) are.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", str(script)) or ""
    return (filename, tuple(sorted(attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
