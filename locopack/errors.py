"""Typed errors of locopack.

Every error the library raises on bad input is a :class:`LocopackError`; the CLI turns it
into one clear line and a non-zero exit.  Each kind also subclasses the matching stdlib type
(as huggingface_hub does), so callers can catch either.
"""

from __future__ import annotations


class LocopackError(Exception):
    """Base of every error locopack raises on purpose."""


class RecipeError(LocopackError, ValueError):
    """A recipe file cannot be read or does not follow the schema.

    The message names the file, the line, the field path, what was expected and what was found.
    """


class ModelLayoutError(LocopackError, ValueError):
    """A model is of an unsupported family, or its layout is not what its family expects."""


class EditError(LocopackError, ValueError):
    """An edit cannot be computed or would produce invalid weights (NaN/Inf)."""


class ExportError(LocopackError, OSError):
    """An output cannot be written, or a weights file cannot be read safely."""


class HubError(LocopackError, OSError):
    """A Hub operation failed."""


class OfflineError(HubError):
    """The Hub is switched off (``HF_HUB_OFFLINE=1``) and what is needed is not in the cache."""


class ResourceError(LocopackError, OSError):
    """The machine ran short of what a stage needs: disk space, write permission or memory.

    The message names the path or stage and what to free or set; the outputs finished so far
    are kept, so rerunning the same command continues from there.
    """


class FolderLockedError(LocopackError, OSError):
    """Another build is writing into the same output folder; the message names its process."""


class SecretError(LocopackError, PermissionError):
    """A secret of this machine (the Hub token, a credential) would reach a public release; the
    message names the file or field and where the secret comes from, never its value."""
