"""One writer per output folder: the build lock.

Every command that writes into an output folder holds it: ``build``, ``localize``, ``edit``,
``neurons``, ``export`` and ``card``.  A command holds an OS file lock (``filelock``: ``flock``
on Unix, ``LockFileEx`` on Windows) on ``cache/.build.lock`` in its output folder for as long
as it runs.  The operating system drops the lock when the process ends, however it ends, so a
lock left by a killed build is simply taken over by the next one; there is nothing to break by
hand.  Beside the lock, the holder writes its command, pid, host and start time to
``cache/.build-holder``, which a second command reads to say who holds the folder.  Both lie in
the folder that never leaves the machine (see
:func:`~locopack.release.layout.is_local_only`), so they never become part of the release; the
lock file stays there after the build, as ``flock`` needs.

Under ``accelerate launch`` the processes of one build share the folder: only the main
process takes the lock, and it tells the others whether it got it (see :func:`build_lock`).

Before it takes the lock, a command refuses a folder that holds a symbolic link, and while it
holds the lock no write under the folder goes through one
(:func:`~locopack.release.layout.refuse_links`, :func:`~locopack.storage.confined`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

from filelock import FileLock, Timeout

from ..distributed import ProcessGroup, gather
from ..errors import FolderLockedError
from ..filenames import CACHE_DIR
from ..release.layout import refuse_links
from ..storage import confined

LOCK_FILE = f"{CACHE_DIR}/.build.lock"
#: who holds the lock: pid, host and start time of the build (JSON)
HOLDER_FILE = f"{CACHE_DIR}/.build-holder"


class BuildHolder(TypedDict, total=False):
    """What a command holding the lock writes about itself (empty when nothing was read)."""

    command: str
    pid: int
    host: str
    started: str


def _holder(folder: Path) -> BuildHolder:
    """What the holder wrote about itself ({} if unreadable or not yet written)."""
    try:
        found = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(holder: BuildHolder) -> str:
    if not holder:
        return "a command that has not yet said which process it is"
    return (
        f"locopack {holder.get('command', 'build')}, pid {holder.get('pid')} on "
        f"{holder.get('host')}, started {holder.get('started')}"
    )


def _take(folder: Path) -> tuple[FileLock | None, str | None]:
    """Try the lock once, without waiting: ``(lock, None)``, or ``(None, why not)``."""
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None, (
            f"{folder}: another command is writing into this folder "
            f"({_describe(_holder(folder))}); wait for it to finish, or write into another --out"
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
def build_lock(
    folder: Path, group: ProcessGroup | None = None, *, command: str = "build"
) -> Iterator[BuildHolder]:
    """Hold ``folder``'s build lock for the block, as the locopack ``command`` named.

    The main process of ``group`` takes the lock and records itself as the holder; every
    process of the group then learns the outcome, so all of them fail together when another
    command holds the folder.  No write under ``folder`` goes through a link meanwhile.

    Yields:
        What the previous holder recorded when its build ended without releasing the lock
        (it was killed), else ``{}``.

    Raises:
        FolderLockedError: another command holds the lock; the message names it, its pid and
            start.
        ExportError: ``folder`` holds a symbolic link (every process sees it: nothing shared).
    """
    group = group or ProcessGroup()
    refuse_links(folder)  # before the lock file: a linked cache/ would put it elsewhere
    (folder / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    lock, refused = _take(folder) if group.is_main else (None, None)
    refused = gather(group, refused)[0]
    if refused:
        raise FolderLockedError(refused)
    try:
        killed = _holder(folder) if lock is not None else {}
        if lock is not None:
            me: BuildHolder = {
                "command": command,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            # one short write, read only by a command refused the lock
            (folder / HOLDER_FILE).write_text(json.dumps(me) + "\n", encoding="utf-8")
        with confined(folder):
            yield killed
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):  # no stale holder once the lock is free
                (folder / HOLDER_FILE).unlink()
            lock.release()
