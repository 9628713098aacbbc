"""A machine running short, in one line: disk space, file size limit, write permission, memory,
the network.

Such a failure can surface in many forms: an ``OSError`` with its errno, a ``SafetensorError``
that only says "No space left on device" or "File too large", torch's "DefaultCPUAllocator:
can't allocate memory" ``RuntimeError``, a ``MemoryError``, a shared library that cannot be
mapped under a memory limit, or any of them as the cause of another error.
:func:`resource_errors` turns each into a :class:`~locopack.errors.ResourceError` naming the
stage and the path, and what to free or set.  Every stage writes atomically, so what was
finished is kept and the same command, rerun, continues from there.

:func:`as_user_error` is the CLI's last look at an error no stage translated: the Hub out of
reach (:func:`~locopack.hub_ref.hub_unreachable`), a shortage, or a path too long for
the file system, each as one line naming the command.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import LocopackError, ResourceError
from ..hub_ref import hub_unreachable

_RERUN = "then rerun the same command: the finished stages are kept"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}
#: what allocation failures say when they arrive as text: torch, dlopen and oneDNN (whose
#: convolutions report a failed allocation as a primitive it could not create) under a limit
_NO_MEMORY = ("can't allocate memory", "cannot allocate memory", "out of memory", "bad_alloc")
_NO_MEMORY += ("failed to map segment", "could not create a primitive")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from or while handling (at most 8)."""
    seen = 0
    while err is not None and seen < 8:
        yield err
        err, seen = err.__cause__ or err.__context__, seen + 1


def _is_out_of_memory(err: BaseException) -> bool:
    """A host allocation failure (MemoryError, ENOMEM, torch's CPU allocator, a library that
    cannot be mapped) or a device one."""
    text = str(err).lower() if isinstance(err, RuntimeError | ImportError | OSError) else ""
    return (
        isinstance(err, MemoryError)
        or getattr(err, "errno", None) == errno.ENOMEM
        or any(words in text for words in _NO_MEMORY)
    )


def _short(path: object, keep: int = 120) -> str:
    """``path`` as text, its middle cut out when longer than ``keep`` characters."""
    text = str(path)
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}"


def as_resource_error(
    err: BaseException, stage: str, folder: Path | None = None
) -> ResourceError | None:
    """The :class:`ResourceError` that ``err``, raised in ``stage`` of a build into
    ``folder``, stands for; None when it is no shortage of disk, file size, permission or
    memory, nor a path too long."""
    return _shortage(err, f"the {stage} stage", folder)


def as_user_error(err: BaseException, command: str) -> LocopackError | None:
    """The one-line error that ``err``, which escaped ``locopack COMMAND``, stands for: the Hub
    out of reach (:func:`~locopack.hub_ref.hub_unreachable`) or a shortage as in
    :func:`as_resource_error`; None when it is neither (a bug: it keeps its traceback)."""
    during = f"locopack {command}"
    return hub_unreachable(err, during) or _shortage(err, during, None)


def _shortage(err: BaseException, during: str, folder: Path | None) -> ResourceError | None:
    where = str(folder) if folder is not None else "the output folder"
    for found in _chain(err):
        if isinstance(found, LocopackError):
            return None  # already says what happened
        number = getattr(found, "errno", None)
        path = _short(getattr(found, "filename", None) or where)
        text = str(found).lower()
        if number in _DISK_FULL or "no space left on device" in text:
            return ResourceError(
                f"disk full while writing {path} ({during}): free space on the disk that "
                f"holds {where}, or build into another --out; {_RERUN}"
            )
        if number == errno.EFBIG or "file too large" in text:
            return ResourceError(
                f"file size limit reached while writing {path} ({during}): raise it (ulimit "
                f"-f unlimited), or build where no limit applies; {_RERUN}"
            )
        if number in _NO_WRITE:
            why = "read-only file system" if number == errno.EROFS else "permission denied"
            return ResourceError(
                f"{why} for {path} ({during}): the folder cannot be written; pass another "
                f"--out, or let this user write {where} and read the recipe's models; {_RERUN}"
            )
        if number == errno.ENAMETOOLONG:
            return ResourceError(
                f"path too long for the file system: {path} ({during}); shorten it (at most "
                "255 bytes per name, 4096 in all)"
            )
        if _is_out_of_memory(found):
            return ResourceError(
                f"out of memory in {during}: close other programs, raise the memory limit "
                "(ulimit -v), or set base.dtype: float16 (or bfloat16) in the recipe to halve "
                f"the model's memory; {_RERUN}"
            )
    return None


@contextlib.contextmanager
def resource_errors(folder: Path, stage: Callable[[], str]) -> Iterator[None]:
    """Turn a shortage of disk, permission or memory in the block, or the Hub out of reach,
    into one :class:`~locopack.errors.LocopackError`; ``stage()`` names the stage that was
    running."""
    try:
        yield
    except Exception as err:
        name = stage()
        translated = hub_unreachable(err, f"the {name} stage")
        translated = translated or as_resource_error(err, name, folder)
        if translated is None:
            raise
        raise translated from None
