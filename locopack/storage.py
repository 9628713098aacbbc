"""Atomic writes and safe weight files.

Outputs are written to a temporary sibling and renamed into place, so a crash never leaves a
file or folder that looks complete; it may leave the hidden siblings themselves
(``.NAME.XXXXXXXX.tmp`` files and folders, ``.NAME.old`` folders), which
:func:`remove_leftovers` clears once no write can be under way.  Weights are read with
safetensors only; a truncated or corrupted file becomes an
:class:`~locopack.errors.ExportError` naming it.

No write goes through a symbolic link inside a folder that a command holds (:func:`confined`,
entered by the folder's lock): a link there could point anywhere, so the write would land
outside the folder.  The module imports no torch, so that the lock stays cheap to import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from .errors import ExportError

if TYPE_CHECKING:
    import torch

#: the hidden siblings an interrupted :func:`atomic_file` or :func:`atomic_dir` leaves behind
_LEFTOVER = re.compile(r"\..+\.(\w+\.tmp|old)")
#: the folders held by this process (:func:`confined`); a list, as a folder may be held twice
_CONFINED: list[Path] = []


@contextlib.contextmanager
def confined(folder: str | os.PathLike) -> Iterator[None]:
    """While the block runs, refuse every atomic write under ``folder`` whose path passes
    through a symbolic link inside it.  ``folder`` itself may be a link (the user named it).
    Process-wide, not per thread: the writers of a build may run in worker threads.
    """
    root = Path(os.path.abspath(folder))
    _CONFINED.append(root)
    try:
        yield
    finally:
        _CONFINED.remove(root)


def _refuse_links(path: Path) -> None:
    """Raise when ``path`` or a folder on the way to it is a link inside a confined folder.

    Raises:
        ExportError: naming the link.
    """
    target = Path(os.path.abspath(path))
    for root in _CONFINED:
        if not target.is_relative_to(root):
            continue
        step = root
        for part in target.relative_to(root).parts:
            step = step / part
            if step.is_symlink():
                raise ExportError(
                    f"{step}: a symbolic link inside {root}; locopack never writes through one "
                    "(it could point anywhere): replace it with a real file or folder, or remove it"
                )


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it only if the block succeeds."""
    path = Path(path)
    _refuse_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp's 0600 would outlive the rename (and a writer may have replaced the file)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    with atomic_file(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _take_umask(folder: Path) -> None:
    """Give what writers left in ``folder`` the umask's modes (safetensors writes 0600)."""
    mask = current_umask()
    for item in [folder, *folder.rglob("*")]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only when the block succeeds."""
    path = Path(path)
    _refuse_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _take_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of interrupted atomic writes anywhere under ``folder``.

    Call it only while no write into ``folder`` can be under way (e.g. holding the folder's
    build lock).

    Returns:
        What was removed, in walk order.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in [d for d in dirs if _LEFTOVER.fullmatch(d)]:
            shutil.rmtree(Path(root, name), ignore_errors=True)
            dirs.remove(name)  # not walked into
            removed.append(Path(root, name))
        for name in filter(_LEFTOVER.fullmatch, files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(root, name))
            removed.append(Path(root, name))
    return removed


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Save tensors as safetensors with string metadata, atomically; the same tensors and
    metadata give the same bytes."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _sort_header(tmp)
    return Path(path)


def _sort_header(path: Path) -> None:
    """Sort the keys of a safetensors file's JSON header in place: safetensors writes the
    metadata in hash order, which changes from one process to the next.  The sorted header
    has the same characters (both writers are compact JSON), so the tensors do not move."""
    with path.open("r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        blob = text.encode("utf-8").ljust(size)  # safetensors pads with spaces, to 8 bytes
        if len(blob) != size:
            raise ExportError(
                f"{path}: the header safetensors wrote grows when sorted ({len(blob)} bytes, "
                f"not {size}); use safetensors 0.8, or report it"
            )
        handle.seek(8)
        handle.write(blob)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata.

    Raises:
        ExportError: the file is missing, not safetensors, truncated or corrupted.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ExportError(
            f"{path}: not a valid safetensors file ({err}); it may be truncated or corrupted, "
            "re-create or re-download it"
        ) from None
    return tensors, metadata


def header_json(path: str | os.PathLike, metadata: dict[str, str], key: str) -> dict[str, object]:
    """The JSON object stored under ``key`` in a safetensors header (``{}`` when absent).

    Raises:
        ExportError: the entry is not a JSON object, e.g. the header was damaged.
    """
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as err:
        value = err
    if not isinstance(value, dict):
        raise ExportError(
            f"{path}: the header entry {key!r} is not a JSON object ({value}); the file is "
            "damaged, re-create or re-download it"
        )
    return value
