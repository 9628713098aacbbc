"""Audit a release: do its files, history, adapter and merged checkpoint match the record?

Checks, each reported by name with the file or history entry it concerns:

1. ``history.jsonl`` parses; each entry's hash matches its content and links to the previous
   entry (editing, reordering or dropping a line breaks this);
2. every file recorded by the last entry exists with the recorded sha256, no unrecorded
   file sits beside them, and the folder holds no symbolic link (a release holds regular files
   and folders only: a link is never listed, uploaded or written through);
3. ``delta.safetensors`` holds the tensors whose hash the entry recorded, and the adapter
   reproduces that delta within the recorded tolerance;
4. a base that is the merged checkpoint of an earlier release (the chain's previous entry)
   still holds the files that release recorded, where the base is a folder here: a damaged
   or altered copy is named even where the fingerprint (site weights only) cannot see it;
5. a merged checkpoint equals base + delta for every edited tensor and the base elsewhere,
   where the base model can be reached;
6. the signature (``release.sig``) against the keys given, or "unsigned" / "signed, not
   verified: no key given" without one; the provenance against the history; the signer of
   each earlier release of the chain that is reachable (:mod:`locopack.release.verify`);
7. the verdict on the recipe's requirements that ``evidence.json`` and the card state is the
   one the evidence gives (:func:`~locopack.release.card_verdict.check_verdict`); an honest
   "not met" passes, a card edited to "meets" fails;
8. optionally (``reproduce``), re-running the recorded recipe on the recorded base gives the
   same localization and the same delta (see :mod:`locopack.pipeline.reproduce`).

The base and the CLIP scorer are found where the history records them relative to the
release folder, or where ``base``/``scorer`` point (``--base``/``--scorer``): a release copied
elsewhere still audits, and a check that needs a base it cannot find says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from ..errors import LocopackError
from ..hub_ref import is_hub_id
from ..pipeline.reproduce import Reproduce
from .card_verdict import check_verdict
from .history import entry_hash, read_history
from .layout import (
    ADAPTER_FILE,
    DELTA_FILE,
    HISTORY_FILE,
    MERGED_DIR,
    PIPELINE_INDEX,
    RECIPE_FILE,
    hashed_files,
    links,
    recorded_base,
)
from .records.history import HistoryEntry
from .signing import TrustedKeys
from .verify import check_signature

if TYPE_CHECKING:
    from ..recipe.schema import Recipe


@dataclass
class Check:
    """One verified property: its name, whether it held, and what was found."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class AuditReport:
    """Every check and the timeline of what was applied to the model."""

    folder: str
    checks: list[Check] = field(default_factory=list)
    entries: list[HistoryEntry] = field(default_factory=list)
    reproduce: str | None = None  # "full" or "quick" when the recipe was re-run

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "folder": self.folder,
            "ok": self.ok,
            "reproduce": self.reproduce,
            "checks": [c.__dict__ for c in self.checks],
            "timeline": [
                e.model_dump(
                    mode="json",
                    include={
                        "index",
                        "time",
                        "recipe_name",
                        "recipe_sha256",
                        "base_model",
                        "edits",
                        "hash",
                    },
                )
                for e in self.entries
            ],
        }


def _check_chain(report: AuditReport, folder: Path) -> bool:
    try:
        entries = read_history(folder / HISTORY_FILE)
    except LocopackError as err:
        return report.add("history", False, str(err))
    if not entries:
        return report.add("history", False, f"{folder / HISTORY_FILE}: missing or empty")
    previous = None
    for number, entry in enumerate(entries, 1):
        where = f"{HISTORY_FILE} line {number} ({entry.recipe_name})"
        if entry.hash != entry_hash(entry):
            return report.add("history chain", False, f"{where}: content does not match its hash")
        if entry.prev != previous or entry.index != number - 1:
            return report.add(
                "history chain",
                False,
                f"{where}: does not follow the previous entry (reordered, "
                "inserted or dropped line)",
            )
        previous = entry.hash
    copy = folder / MERGED_DIR / HISTORY_FILE
    if copy.exists() and copy.read_bytes() != (folder / HISTORY_FILE).read_bytes():
        return report.add(
            "history chain",
            False,
            f"merged/{HISTORY_FILE}: differs from the release's {HISTORY_FILE}",
        )
    recipe = folder / RECIPE_FILE
    if recipe.is_file() and recipe.read_bytes() != entries[-1].recipe_text.encode():
        return report.add(
            "history chain",
            False,
            f"{HISTORY_FILE}: its last entry records another recipe than {RECIPE_FILE} (an "
            "entry dropped or replaced, or the recipe edited)",
        )
    report.entries = entries  # only a verified chain is shown as a timeline
    return report.add("history chain", True, f"{len(entries)} entries")


def _check_files(
    report: AuditReport, folder: Path, entry: HistoryEntry, snapshot: bool = False
) -> bool:
    linked = {} if snapshot else links(folder)
    if linked:
        name, target = next(iter(linked.items()))
        return report.add(
            "files",
            False,
            f"{name}: a symbolic link (to {target}); a release holds regular files and folders "
            "only",
        )
    recorded = entry.files
    actual = hashed_files(folder, snapshot=snapshot)
    for name, digest in sorted(recorded.items()):
        if name not in actual:
            return report.add("files", False, f"{name}: recorded but missing")
        if actual[name] != digest:
            return report.add("files", False, f"{name}: sha256 differs from the record")
    extra = sorted(set(actual) - set(recorded))
    if extra:
        return report.add("files", False, f"{extra[0]}: not recorded in the history")
    return report.add("files", True, f"{len(recorded)} files match")


def _check_delta_and_adapter(report: AuditReport, folder: Path, entry: HistoryEntry):
    from ..delta import WeightDelta
    from ..export.lora import read_adapter

    try:
        delta = WeightDelta.load(folder / DELTA_FILE)
    except LocopackError as err:
        report.add("delta", False, str(err))
        return None
    if not report.add(
        "delta",
        delta.sha256() == entry.delta_sha256,
        "delta.safetensors: tensors match the recorded hash"
        if delta.sha256() == entry.delta_sha256
        else "delta.safetensors: tensors differ from the recorded hash",
    ):
        return None
    if (folder / ADAPTER_FILE).is_file():
        try:
            tensors, _, _ = read_adapter(folder / ADAPTER_FILE)
        except LocopackError as err:
            report.add("adapter", False, str(err))
            return delta
        tolerance = (entry.adapter_tolerance or 0.0) + 1e-6
        worst = 0.0
        for path, d in delta.deltas.items():
            key = f"{delta.denoiser}.{path}"
            up, down = tensors.get(f"{key}.lora_B.weight"), tensors.get(f"{key}.lora_A.weight")
            if up is None or down is None:
                report.add("adapter", False, f"{ADAPTER_FILE}: no factors for {path}")
                return delta
            if up.ndim != 2 or down.ndim != 2 or (up.shape[0], down.shape[1]) != tuple(d.shape):
                report.add(
                    "adapter", False, f"{ADAPTER_FILE}: the factors for {path} have other shapes"
                )
                return delta
            d = d.double()
            worst = max(worst, float((up.double() @ down.double() - d).norm() / d.norm()))
        report.add(
            "adapter",
            worst <= tolerance,
            f"{ADAPTER_FILE}: reproduces the delta within {worst:.1e} "
            f"(recorded tolerance {tolerance:.1e})",
        )
    return delta


def _denoiser_tensors(folder: Path, attr: str, names: set[str] | None = None):
    from safetensors import safe_open

    tensors = {}
    for path in sorted((folder / attr).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if names is None or key in names:
                    tensors[key] = handle.get_tensor(key)
    return tensors


def _check_merged(
    report: AuditReport, folder: Path, entry: HistoryEntry, delta, base: str | None
) -> None:
    from ..hub.apply import pipeline_source

    merged = folder / MERGED_DIR
    if delta is None or not (merged / PIPELINE_INDEX).is_file():
        return
    if base is None or not Path(base).is_dir():
        report.add(
            "merged",
            True,
            f"skipped: the base {entry.base_model!r} is not a folder here; pass --base "
            "DIR to check merged/ against it",
        )
        return
    base = Path(pipeline_source(base)[0])  # a release as base: its merged checkpoint
    attr = delta.denoiser
    merged_t, base_t = _denoiser_tensors(merged, attr), _denoiser_tensors(base, attr)
    edited = {f"{p}.weight": d for p, d in delta.deltas.items()}
    if merged_t.keys() != base_t.keys():
        report.add("merged", False, f"merged/{attr}: tensor names differ from the base")
        return
    for key, value in merged_t.items():
        expected = base_t[key]
        if key in edited:
            expected = (expected.float() + edited[key]).to(expected.dtype)
            close = torch.allclose(value.float(), expected.float(), rtol=1e-3, atol=1e-6)
        else:
            close = torch.equal(value, expected)
        if not close:
            report.add("merged", False, f"merged/{attr}: {key} is not base + delta")
            return
    report.add("merged", True, f"merged/{attr} equals base + delta ({len(edited)} edited)")


def _check_base(report: AuditReport, base: str | None) -> None:
    from ..hub.apply import pipeline_source
    from ..pipeline.base import changed_file

    if len(report.entries) < 2 or base is None or not Path(base).is_dir():
        return  # a first release of a plain model: nothing recorded the base's files
    try:
        changed = changed_file(Path(pipeline_source(base)[0]), report.entries[-2])
    except (LocopackError, OSError) as err:  # a release without merged/, an unreadable file
        changed = str(err)
    if changed:
        report.add(
            "base",
            False,
            f"the base at {base} differs from the one this release was built on: {changed}",
        )
    else:
        report.add("base", True, f"the base at {base} holds the files its release recorded")


def audit_folder(
    folder: str | Path,
    *,
    reproduce: Reproduce | None = None,
    base: str | None = None,
    scorer: str | None = None,
    allow_pickle: bool = False,
    snapshot: bool = False,
    trusted: TrustedKeys | None = None,
    recipe: Recipe | None = None,
) -> AuditReport:
    """Audit the release in ``folder``; see the module docstring.

    ``base``/``scorer``: where the base model and the CLIP scorer are, when not where the
    history records them relative to the release.  ``snapshot``: ``folder`` is a snapshot of
    the Hub client's cache, whose files are links into its blob store.  ``trusted``: the keys
    (or certificate chain, or Sigstore identity) its signature must verify against.
    ``recipe``: the release's recipe where the caller has read it already (it is used only
    where it is the one the folder holds).
    """
    folder = Path(folder)
    report = AuditReport(str(folder))
    if not _check_chain(report, folder):
        return report
    last = report.entries[-1]
    check_signature(report, folder, trusted or TrustedKeys(), snapshot)
    _check_files(report, folder, last, snapshot)
    report.add("requirements", *check_verdict(folder, recipe))
    delta = _check_delta_and_adapter(report, folder, last)
    base = base or recorded_base(last, folder)
    _check_base(report, base)
    try:
        _check_merged(report, folder, last, delta, base)
    except (LocopackError, OSError, ValueError, SafetensorError) as err:  # damaged checkpoint
        report.add("merged", False, f"merged/: cannot be read ({err})")
    if reproduce is not None and delta is not None:
        _check_reproduce(report, folder, last, delta, base, scorer, reproduce, allow_pickle)
    return report


def _check_reproduce(report, folder, entry, delta, base, scorer, how, allow_pickle) -> None:
    from ..pipeline.reproduce import reproduce as rerun

    report.reproduce = how.value
    if delta.sites is None:  # checked before the base is loaded
        report.add("reproduce", False, f"{DELTA_FILE}: its provenance names no edited sites")
        return
    if base is None or not (Path(base).is_dir() or is_hub_id(base)):
        report.add(
            "reproduce",
            False,
            f"the base {entry.base_model!r} is not reachable here; pass --base DIR (or a Hub id)",
        )
        return
    try:
        for name, ok, detail in rerun(
            entry, delta, folder, base, scorer, how, allow_pickle=allow_pickle
        ):
            report.add(name, ok, detail)
    except LocopackError as err:  # the base model or the recipe cannot be loaded
        report.add("reproduce", False, str(err))


def timeline(report: AuditReport) -> str:
    """A readable account of what was applied to the model, oldest first."""
    lines = []
    for entry in report.entries:
        edits = "; ".join(
            f"{e.kind} {e.label!r} -> {', '.join(repr(t) for t in e.targets)}" for e in entry.edits
        )
        lines.append(
            f"{entry.time}  #{entry.index}  {entry.recipe_name} "
            f"(recipe {entry.recipe_sha256[:12]}) on {entry.base_model}"
        )
        lines.append(f"    {edits}")
    return "\n".join(lines)
