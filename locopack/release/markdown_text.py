"""Recipe text placed in the model card's Markdown as literal text, never as markup.

A recipe's description, labels and prompts are written by whoever wrote the recipe; on the
card they must not become HTML, links or images (a ``<script>``, an ``![](beacon)``, a
``[click](javascript:…)``, a bare URL that a renderer links), nor break the card's tables
or code blocks.  Prose is backslash-escaped so it reads the same once rendered; prompts go
in code spans.  Escaping is kept to the characters that can start markup, so the raw
``README.md`` stays readable:

- always ``\\ ` * _ [ < | ~ $ @`` (``$``: the Hub renders math; ``@``: ``mailto:a@b``);
- at the start of a line: the block markers ``# > - + =``, an ordered list's ``1.`` or ``1)``;
- ``&`` before an entity name, ``:`` before ``/`` and ``/`` after ``/`` (a scheme's ``://``),
  ``.`` between two letters or digits (a domain name a renderer would link).

Every helper first drops terminal control sequences
(:func:`~locopack.control_chars.strip_controls`).

The model card is a Jinja template (``templates/model_card.md.j2``) whose values are escaped
here, in Python: Jinja's autoescape writes HTML entities, which Markdown shows literally in
code spans and which leave Markdown's own markup (links, images, tables) open.
"""

from __future__ import annotations

import re

from ..control_chars import strip_controls

_SPECIAL = re.compile(
    r"[\\`*_\[<|~$@]"  # inline markup, HTML, tables, math, e-mail addresses
    r"|^[#>\-+=]"  # block markers at the start of a line
    r"|&(?=[#A-Za-z0-9])"  # entities
    r"|:(?=/)|(?<=/)/"  # a scheme's "://", a protocol-relative "//"
    r"|(?<=[^\W_])\.(?=[^\W_])",  # "evil.com": a domain a renderer links
    re.MULTILINE,
)


_LIST_MARKER = re.compile(r"^(\d+)([.)])")  # "1." or "12)" at the start of a line


def _escape(line: str) -> str:
    escaped = _SPECIAL.sub(lambda m: "\\" + m.group(), line.strip())
    return _LIST_MARKER.sub(r"\1\\\2", escaped)


def prose(text: str) -> str:
    """``text`` as literal Markdown paragraphs: each line escaped and stripped (leading
    spaces would make a code block), blank lines kept as paragraph breaks."""
    return "\n".join(_escape(line) for line in strip_controls(text).strip().splitlines())


def inline(text: str) -> str:
    """``text`` escaped on one line, for a list item, a heading or a table cell."""
    return _escape(" ".join(strip_controls(text).split()))


def code(text: str, *, cell: bool = False) -> str:
    """``text`` in a code span on one line; its fence outlasts any run of backticks in it.
    In a table ``cell``, its ``|`` are escaped (GitHub-flavoured tables split on them)."""
    body = " ".join(strip_controls(text).splitlines())
    if cell:
        body = body.replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall(r"`+", body)), default=0) + 1)
    if body.startswith("`") or body.endswith("`") or (body.startswith(" ") and body.endswith(" ")):
        body = f" {body} "  # a renderer strips one space on each side
    return f"{fence}{body}{fence}"


def fence(text: str) -> str:
    """The fence of a code block holding ``text``: longer than any backtick run in it."""
    return "`" * max(3, max(map(len, re.findall(r"`+", text)), default=0) + 1)


def fenced(text: str, info: str = "") -> str:
    """``text`` as a fenced code block whose fence is longer than any backtick run in it."""
    body = strip_controls(text).rstrip()
    return f"{fence(body)}{info}\n{body}\n{fence(body)}"
