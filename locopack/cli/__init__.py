"""The ``locopack`` command line: parse arguments, call the library, report in one line.

:mod:`.group` holds the group and its global options; the commands live in
:mod:`.model_commands` (recipes and models), :mod:`.method_commands` (LocoGen, LocoEdit,
neurons) and :mod:`.release_commands` (export, build, card, audit, push, generate) and
:mod:`.sign_commands` (sign).
"""

from __future__ import annotations

from . import method_commands, model_commands, release_commands, sign_commands
from .group import cli

for _module in (model_commands, method_commands, release_commands, sign_commands):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Entry point of the ``locopack`` console script."""
    cli(prog_name="locopack")


__all__ = ["cli", "main"]
