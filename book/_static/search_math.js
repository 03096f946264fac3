/* Search results without raw TeX.

   Sphinx's search page (searchtools.js) titles a result with the section's title as text,
   "What \gamma and \beta are for", and builds its snippet from the page's HTML, where math
   is still its TeX source, "\(\hat x\)" (MathJax typesets it only on the page itself).
   This script, loaded on every page and active where Sphinx's `Search` exists, rewrites
   both with a small TeX-to-text conversion: Greek letters and common symbols become their
   Unicode characters, accents and fonts are dropped ("\hat x" -> "x̂", "\mathbf{h}" -> "h"),
   fractions become "a/b", and no backslash or brace is left. tests/site/test_browser.py
   checks the search page. */
(function () {
  "use strict";
  const SYMBOLS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ϵ", varepsilon: "ε",
    zeta: "ζ", eta: "η", theta: "θ", vartheta: "ϑ", iota: "ι", kappa: "κ", lambda: "λ",
    mu: "μ", nu: "ν", xi: "ξ", pi: "π", rho: "ρ", sigma: "σ", tau: "τ", upsilon: "υ",
    phi: "ϕ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ",
    Theta: "Θ", Lambda: "Λ", Xi: "Ξ", Pi: "Π", Sigma: "Σ", Phi: "Φ", Psi: "Ψ", Omega: "Ω",
    times: "×", cdot: "·", cdots: "⋯", ldots: "…", dots: "…", pm: "±", mp: "∓",
    le: "≤", leq: "≤", ge: "≥", geq: "≥", ne: "≠", neq: "≠", approx: "≈", sim: "∼",
    equiv: "≡", propto: "∝", to: "→", rightarrow: "→", leftarrow: "←", mapsto: "↦",
    Rightarrow: "⇒", in: "∈", notin: "∉", subset: "⊂", infty: "∞", partial: "∂",
    nabla: "∇", sum: "∑", prod: "∏", int: "∫", sqrt: "√", mid: "|", top: "⊤",
    odot: "⊙", circ: "∘", ell: "ℓ", forall: "∀", exists: "∃", lVert: "‖", rVert: "‖",
    Vert: "‖", lvert: "|", rvert: "|", langle: "⟨", rangle: "⟩", quad: " ", qquad: " ",
  };
  const ACCENTS = { hat: "\u0302", bar: "\u0304", tilde: "\u0303", dot: "\u0307", vec: "\u20d7" };

  function texToText(tex) {
    let s = tex.replace(/\\[()[\]]/g, "");  // the delimiters \( \) \[ \]
    // \frac{a}{b} -> a/b (innermost first)
    for (let i = 0; i < 5; i++) {
      s = s.replace(/\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "$1/$2");
    }
    // accents: \hat x, \hat{x} -> x with a combining mark
    s = s.replace(/\\(hat|bar|tilde|dot|vec)\s*(?:\{([^{}]*)\}|([A-Za-z0-9]))/g,
      (m, acc, group, single) => (group !== undefined ? group : single) + ACCENTS[acc]);
    // \left( \right) \big| ... -> the delimiter alone
    s = s.replace(/\\(left|right|[bB]ig+[lr]?)\s*\\?/g, "");
    s = s.replace(/\\operatorname\*?/g, "");
    // named symbols
    s = s.replace(/\\([A-Za-z]+)/g, (m, name) => (name in SYMBOLS ? SYMBOLS[name] : ""));
    // escaped characters, spacing commands
    s = s.replace(/\\([{}%$#&_])/g, "$1").replace(/\\[,;:!> ]/g, " ").replace(/\\\\/g, " ");
    s = s.replace(/[{}]/g, "").replace(/&/g, " ");
    return s.replace(/\s+/g, " ").trim();
  }
  window.allAboutNormTexToText = texToText;

  function install() {
    if (typeof Search === "undefined" || Search._texFree) return;
    Search._texFree = true;
    const htmlToText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => {
      const doc = new DOMParser().parseFromString(htmlString, "text/html");
      doc.querySelectorAll(".math").forEach((el) => {
        el.textContent = " " + texToText(el.textContent) + " ";
      });
      // The article header's buttons ("Colab", ".ipynb", ".md") are not the page's text:
      // without this, a snippet that does not contain the search word starts with them.
      doc.querySelectorAll(".bd-header-article, .prev-next-area, .footer-article-items")
        .forEach((el) => el.remove());
      // TeX quoted as prose (not code), e.g. the seeds' "$\beta,\gamma$" and "\mu" in
      // the claims ledger's verbatim quotes.
      const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest("pre, code, .highlight")) continue;
        if (!/[$\\]/.test(node.nodeValue)) continue;
        node.nodeValue = node.nodeValue
          .replace(/\$([^$\n]{1,200}?)\$/g, (m, tex) => texToText(tex))
          .replace(/\\([A-Za-z]+)/g, (m, name) => (name in SYMBOLS ? SYMBOLS[name] : m));
      }
      return htmlToText(doc.documentElement.outerHTML, anchor);
    };
    // searchindex.js may already have handed Sphinx its index (it runs before this), or
    // may do so later: clean it in both cases, before Search.init runs the query.
    if (Search._index) cleanIndex(Search._index);
    const setIndex = Search.setIndex;
    Search.setIndex = (index) => setIndex.call(Search, cleanIndex(index));
  }

  function cleanIndex(index) {
    if (index && index.alltitles) {
      const titles = {};
      for (const [title, where] of Object.entries(index.alltitles)) {
        const text = title.includes("\\") ? texToText(title) : title;
        titles[text] = (titles[text] || []).concat(where);
      }
      index.alltitles = titles;
    }
    if (index && Array.isArray(index.titles)) {
      index.titles = index.titles.map((t) => (t.includes("\\") ? texToText(t) : t));
    }
    return index;
  }
  // Loaded before searchtools.js; this listener runs before the one searchtools.js adds
  // (Search.init, which runs the query), because it is added first.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install);
  } else {
    install();
  }
})();
