"""MkDocs hooks for the documentation site (mkdocs.yml, ``hooks``).

The pages are also read as plain Markdown on a forge, where a ``|`` inside a table cell must be written
``\\|`` even within backticks; Python-Markdown's tables already keep a code span's ``|`` in its cell and
would print the backslash. So, on table rows only, code spans lose that escape before the page renders.
"""

from __future__ import annotations

import re
from typing import Any

CODE_SPAN = re.compile(r"`[^`\n]+`")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The page with ``\\|`` unescaped inside the code spans of table rows (lines starting with ``|``)."""
    return "\n".join(
        CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line) if line.startswith("|") else line
        for line in markdown.split("\n")
    )
