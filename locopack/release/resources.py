"""A machine running short, in one line: disk space, write permission, memory.

Such a failure can surface in many forms: an ``OSError`` with its errno, a ``SafetensorError``
that only says "No space left on device", torch's "DefaultCPUAllocator: can't allocate
memory" ``RuntimeError``, a ``MemoryError``, or any of them as the cause of another error.
:func:`resource_errors` turns each into a :class:`~locopack.errors.ResourceError` naming the
stage and the path, and what to free or set.  Every stage writes atomically, so what was
finished is kept and the same command, rerun, continues from there.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import LocopackError, ResourceError

_RERUN = "then rerun the same command: the finished stages are kept"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from or while handling (at most 8)."""
    seen = 0
    while err is not None and seen < 8:
        yield err
        err, seen = err.__cause__ or err.__context__, seen + 1


def _is_out_of_memory(err: BaseException) -> bool:
    """A host allocation failure (MemoryError, torch's CPU allocator) or a device one."""
    text = str(err).lower() if isinstance(err, RuntimeError) else ""
    return isinstance(err, MemoryError) or any(
        words in text for words in ("can't allocate memory", "out of memory")
    )


def as_resource_error(err: BaseException, stage: str, folder: Path) -> ResourceError | None:
    """The :class:`ResourceError` that ``err``, raised in ``stage`` of a build into
    ``folder``, stands for; None when it is no shortage of disk, permission or memory."""
    for found in _chain(err):
        if isinstance(found, LocopackError):
            return None  # already says what happened
        number = getattr(found, "errno", None)
        path = getattr(found, "filename", None) or folder
        if number in _DISK_FULL or "no space left on device" in str(found).lower():
            return ResourceError(
                f"disk full while writing {path} (the {stage} stage): free space on the disk "
                f"that holds {folder}, or build into another --out; {_RERUN}"
            )
        if number in _NO_WRITE:
            why = "read-only file system" if number == errno.EROFS else "permission denied"
            return ResourceError(
                f"{why} for {path} (the {stage} stage): let this user write {folder} and read "
                f"the recipe's models, or build into another --out; {_RERUN}"
            )
        if _is_out_of_memory(found):
            return ResourceError(
                f"out of memory in the {stage} stage: close other programs, or set "
                f"base.dtype: float16 (or bfloat16) in the recipe to halve the model's memory; "
                f"{_RERUN}"
            )
    return None


@contextlib.contextmanager
def resource_errors(folder: Path, stage: Callable[[], str]) -> Iterator[None]:
    """Turn a shortage of disk, permission or memory in the block into a
    :class:`ResourceError`; ``stage()`` names the stage that was running."""
    try:
        yield
    except Exception as err:
        translated = as_resource_error(err, stage(), folder)
        if translated is None:
            raise
        raise translated from None
