"""Text from users (file names, config values, echoed input) made safe for Streamlit's Markdown.

``st.caption``, ``st.error``, ``st.warning`` and ``st.info`` render Markdown: a model named
``[x](javascript:alert(1))`` would become a link. ``md`` backslash-escapes every character that
Markdown, GitHub autolinks, Streamlit's directives (``:red[...]``, ``:material/...:``) or LaTeX
(``$``) give a meaning (CommonMark shows an escaped character as itself), and keeps the text on
one line. Commas, quotes and the like stay as they are, so messages stay readable in the source.
"""

from __future__ import annotations

from estimator.units import one_line

_ESCAPES = {ord(c): "\\" + c for c in "\\`*_{}[]()#+-.!|<>~$:&@=^"}


def md(text: object) -> str:
    """``text`` as Markdown that renders as exactly this text (no links, HTML, math or emphasis)."""
    return one_line(str(text)).translate(_ESCAPES)
