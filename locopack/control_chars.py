"""Text from recipes and releases made safe to print: no terminal control sequences.

A recipe is written by anyone; its description or prompts can carry ANSI escape sequences
(colours, cursor moves, window titles, hyperlinks) or carriage returns that overwrite what a
terminal shows.  :func:`strip_controls` removes them, and is applied to every line the CLI
prints and to every piece of recipe text the model card shows.
"""

from __future__ import annotations

import re

# ESC (or the 8-bit CSI/OSC/DCS... introducers) and the sequence it starts: CSI "ESC [ ... final",
# string commands (OSC, DCS, SOS, PM, APC) up to their terminator, two-character escapes
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
# C0 controls but tab and newline, DEL, C1 controls; and the Unicode bidirectional overrides
# and isolates, which reorder what a reader sees
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """``text`` without ANSI escape sequences and control characters; tabs and newlines stay."""
    return _CONTROL.sub("", _SEQUENCE.sub("", text))
