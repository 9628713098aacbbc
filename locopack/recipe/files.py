"""Files a recipe names, read only where and as the user allows.

Recipes are shared like model configs, so a recipe must not be able to make locopack read (and
then publish) files its user did not mean to give it, nor hang it:

- **Prompt files** (``edit.neighbours.source``, ``evidence.sample_unrelated.source``) are read
  only from under the recipe's own folder or a folder the user names (``--prompt-dir DIR`` or
  :data:`PROMPT_DIRS_ENV`, several separated by ``os.pathsep``).  Their lines become prompts,
  which the delta, the adapters, the card and ``evidence.json`` carry: a recipe that could name
  ``/proc/self/environ`` or ``/etc/passwd`` would publish them.  Links are followed first, so a
  link beside the recipe that points outside is refused too.
- **Every file read on a recipe's behalf** (prompt files, the configs of local model and scorer
  folders) must be a regular file: a FIFO blocks the reader forever and ``/dev/zero`` never
  ends.  The check is made on the opened file (``fstat``, opened without blocking), so a file
  swapped after a look cannot slip through, and the size is capped before reading.
- ``/proc``, ``/dev`` and ``/sys`` are never read, whatever folder is allowed.

Each refusal is a :class:`~locopack.errors.RecipeError` naming the field, what was expected and
what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from locopack.errors import RecipeError

#: extra folders prompt files may come from (``os.pathsep``-separated), as ``--prompt-dir`` sets
PROMPT_DIRS_ENV = "LOCOPACK_PROMPT_DIRS"
#: folders of the operating system's own, never read for a recipe
SYSTEM_FOLDERS = (Path("/proc"), Path("/dev"), Path("/sys"))
#: the largest config file read from a model or scorer folder (bytes)
MAX_CONFIG_BYTES = 1024 * 1024


def prompt_roots(recipe_source: str) -> list[Path]:
    """The folders prompt files may come from: the recipe's folder and :data:`PROMPT_DIRS_ENV`."""
    extra = [p for p in os.environ.get(PROMPT_DIRS_ENV, "").split(os.pathsep) if p]
    roots = [Path(recipe_source).resolve().parent] + [Path(p).expanduser().resolve() for p in extra]
    return list(dict.fromkeys(roots))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _system(path: Path) -> Path | None:
    return next((f for f in SYSTEM_FOLDERS if _is_within(path, f)), None)


def prompt_file(recipe_source: str, source: str, field: str) -> Path:
    """Where the prompt file ``source`` of the recipe at ``recipe_source`` is, checked.

    Relative names are resolved against the recipe's folder (never the working directory) and
    links are followed before the check.

    Raises:
        RecipeError: the file lies outside every allowed folder or in a system folder.
    """
    given = Path(source).expanduser()
    path = (Path(recipe_source).resolve().parent / given).resolve()
    where = f"{recipe_source}: {field}"
    system = _system(path)
    if system is not None:
        raise RecipeError(
            f"{where}: expected a prompt file beside the recipe, found {source!r} in {system}, "
            "which locopack never reads for a recipe"
        )
    roots = prompt_roots(recipe_source)
    if not any(_is_within(path, root) for root in roots):
        raise RecipeError(
            f"{where}: expected a prompt file under the recipe's folder, found {source!r} "
            f"outside it; move the file beside the recipe, or allow its folder with "
            f"--prompt-dir DIR (or {PROMPT_DIRS_ENV})"
        )
    return path


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    The file is opened without blocking and checked on the open descriptor, so a FIFO, a
    device or a socket is refused at once instead of hanging or never ending.

    Raises:
        OSError: the file cannot be opened or read (its ``strerror`` says why).
        RecipeError: it is not a regular file, or it is larger than ``limit``; the message
            starts with ``what``.
    """
    if _system(Path(os.path.abspath(path))) is not None:
        raise RecipeError(f"{what}: expected a regular file, found {path} in a system folder")
    kind = special_kind(path)  # sockets cannot even be opened
    if kind:
        raise RecipeError(f"{what}: expected a regular file, found {kind}")
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RecipeError(f"{what}: expected a regular file, found {_kind(info.st_mode)}")
        if info.st_size > limit:
            raise RecipeError(
                f"{what}: expected a file of at most {limit:,} bytes, found {info.st_size:,}"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise RecipeError(f"{what}: expected a file of at most {limit:,} bytes, found more")
    return data


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (``a FIFO``...), else
    None (also when it does not exist).  Links are followed."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _kind(mode)


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device"}
    kinds |= {stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")
