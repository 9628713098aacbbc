"""The ``locopack`` command group: global options, warnings and errors as one line.

The library raises :class:`~locopack.errors.LocopackError`; the group turns it into
``error: <message>`` on stderr and exit status 1, never a traceback.  Commands live in the
sibling modules and are added to the group by :mod:`locopack.cli`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from ..control_chars import strip_controls
from ..errors import LocopackError
from ..evidence.detectors import ALLOW_CODE_ENV
from ..pipeline.resources import as_user_error
from ..recipe.files import PROMPT_DIRS_ENV
from ..version import __version__

# Library chatter (e.g. transformers noting that torchvision is absent) is not for our users.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def quiet_libraries() -> None:
    """Silence third-party progress bars and info logs; locopack prints its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def echo(message: str, *, err: bool = False, file=None) -> None:
    """Print ``message`` without control characters or ANSI escape sequences (recipes and
    releases are written by anyone, and the text they carry reaches the terminal here)."""
    click.echo(strip_controls(str(message)), err=err, file=file)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the terminal as one line, like errors."""
    echo(f"warning: {message}", err=True)


class UserError(click.ClickException):
    """A LocopackError on its way to the terminal: one line, exit status 1."""

    def show(self, file=None) -> None:
        echo(f"error: {self.message}", err=True, file=file)


#: the exit status of a build whose release misses its recipe's requirements
UNMET_EXIT = 3


class UnmetError(UserError):
    """A release that misses its requirements: one line, exit status :data:`UNMET_EXIT`."""

    exit_code = UNMET_EXIT


@dataclass(frozen=True)
class GlobalOptions:
    """The group's options, handed to every command through the click context."""

    allow_pickle: bool = False


def global_options() -> GlobalOptions:
    """The options the group was called with (defaults outside a command)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(GlobalOptions) if ctx is not None else None
    return obj or GlobalOptions()


class LocopackGroup(click.Group):
    """The command group; turns library errors into :class:`UserError`, and so the errors
    that mean the Hub is out of reach or the machine ran short, wherever they escaped
    (:func:`~locopack.pipeline.resources.as_user_error`)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocopackError as err:
            raise UserError(str(err)) from None
        except Exception as err:  # as_user_error is imported beforehand: memory may be short
            translated = as_user_error(err, ctx.invoked_subcommand or "")
            if translated is None:
                raise
            raise UserError(str(translated)) from None


@click.group(cls=LocopackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="locopack")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="LOCOPACK_THREADS",
    default=None,
    help="CPU threads for torch [env LOCOPACK_THREADS; default: torch's choice]. "
    "1 is fastest for tiny models on small machines.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    envvar="LOCOPACK_ALLOW_PICKLE",
    help="Also read pickled (.bin/.ckpt) model weights [env LOCOPACK_ALLOW_PICKLE=1]. "
    "Unpickling can run arbitrary code: use it only for files you trust.",
)
@click.option(
    "--allow-code",
    is_flag=True,
    envvar="LOCOPACK_ALLOW_CODE",
    help="Let a recipe's plug-in detectors (evidence.detectors: module:callable) be imported "
    "and run [env LOCOPACK_ALLOW_CODE=1]. Importing a module runs its code: use it only for "
    "recipes and modules you trust; the card and history then name the plug-ins.",
)
@click.option(
    "--prompt-dir",
    "prompt_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Also read a recipe's prompt files (edit.neighbours.source, "
    "evidence.sample_unrelated.source) from this folder; repeatable [default: the recipe's "
    "folder only].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    threads: int | None,
    allow_pickle: bool,
    allow_code: bool,
    prompt_dirs: tuple[Path, ...],
) -> None:
    """Localize knowledge in a text-to-image model and edit it, from a YAML recipe.

    \b
    A typical session:
      locopack twin sd1 out/tiny-sd1       # build a tiny offline model to try things on
      locopack layers out/tiny-sd1         # where text enters its denoiser, in order
      locopack validate recipe.yaml        # check a recipe before running it
      locopack localize recipe.yaml        # LocoGen: which window of sites holds the concept
      locopack edit recipe.yaml            # LocoEdit: closed-form edit -> delta.safetensors
      locopack build recipe.yaml           # the whole release: adapter, evidence, card, history
      locopack audit out/NAME              # verify a release
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    warnings.showwarning = _show_warning
    ctx.obj = GlobalOptions(allow_pickle=allow_pickle)
    # the library reads these two from the environment (so that the processes of
    # `accelerate launch` see them too); set for this command only
    scoped = {ALLOW_CODE_ENV: "1" if allow_code else None}
    if prompt_dirs:
        scoped[PROMPT_DIRS_ENV] = os.pathsep.join(str(p.resolve()) for p in prompt_dirs)
    ctx.with_resource(_environment(scoped))


@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables, restoring them afterwards."""
    before = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            _set(name, value)
        yield
    finally:
        for name, value in before.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
