"""One writer per output folder: the build lock.

A build holds an OS file lock (``filelock``: ``flock`` on Unix, ``LockFileEx`` on Windows) on
``cache/.build.lock`` in its output folder for as long as it runs.  The operating system
drops the lock when the process ends, however it ends, so a lock left by a killed build is
simply taken over by the next one; there is nothing to break by hand.  Beside the lock, the
holder writes its pid, host and start time to ``cache/.build-holder``, which a second build
reads to say who holds the folder.  Both lie in the folder that never leaves the machine
(see :func:`~locopack.release.layout.is_local_only`), so they never become part of the
release; the lock file stays there after the build, as ``flock`` needs.

Under ``accelerate launch`` the processes of one build share the folder: only the main
process takes the lock, and it tells the others whether it got it (see :func:`build_lock`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..distributed import ProcessGroup, gather
from ..errors import FolderLockedError
from ..filenames import CACHE_DIR

LOCK_FILE = f"{CACHE_DIR}/.build.lock"
#: who holds the lock: pid, host and start time of the build (JSON)
HOLDER_FILE = f"{CACHE_DIR}/.build-holder"


def _holder(folder: Path) -> dict[str, Any]:
    """What the holder wrote about itself ({} if unreadable or not yet written)."""
    try:
        found = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a build that has not yet said which process it is"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _take(folder: Path) -> tuple[FileLock | None, str | None]:
    """Try the lock once, without waiting: ``(lock, None)``, or ``(None, why not)``."""
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None, (
            f"{folder}: another build is writing into this folder ({_describe(_holder(folder))});"
            " wait for it to finish, or build into another --out"
        )
    return lock, None


def check_free(folder: Path) -> None:
    """Fail now when another build holds ``folder``'s lock: a cheap early look, before
    anything heavy is loaded (:func:`build_lock` then takes the lock for the build).

    Raises:
        FolderLockedError: as :func:`build_lock` does.
    """
    if not (folder / LOCK_FILE).is_file():
        return
    lock, refused = _take(folder)
    if refused:
        raise FolderLockedError(refused)
    lock.release()


@contextlib.contextmanager
def build_lock(folder: Path, group: ProcessGroup | None = None) -> Iterator[dict[str, Any]]:
    """Hold ``folder``'s build lock for the block.

    The main process of ``group`` takes the lock and records itself as the holder; every
    process of the group then learns the outcome, so all of them fail together when another
    build holds the folder.

    Yields:
        What the previous holder recorded when its build ended without releasing the lock
        (it was killed), else ``{}``.

    Raises:
        FolderLockedError: another build holds the lock; the message names its pid and start.
    """
    group = group or ProcessGroup()
    (folder / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    lock, refused = _take(folder) if group.is_main else (None, None)
    refused = gather(group, refused)[0]
    if refused:
        raise FolderLockedError(refused)
    try:
        killed = _holder(folder) if lock is not None else {}
        if lock is not None:
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            # one short write, read only by a build refused the lock; the module stays free of
            # torch (storage.py), so that a refused build fails before any heavy import
            (folder / HOLDER_FILE).write_text(json.dumps(me) + "\n", encoding="utf-8")
        yield killed
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):  # no stale holder once the lock is free
                (folder / HOLDER_FILE).unlink()
            lock.release()
