"""``evidence.json``: the before/after evidence of a release (see :mod:`locopack.record`).

The top of the file and each edit's frame are typed; what each prompt set measured (scores,
detector rates, image change), the attack tables and the verdict on the requirements stay
JSON objects, read by the card's sections and the verdict by name.
"""

from __future__ import annotations

from pydantic import Field

from ...record import JsonObject, Record, RecordPart

__all__ = ["EvidenceEdit", "EvidenceInputs", "EvidenceRecord", "GalleryImage"]


class EvidenceInputs(RecordPart):
    """What the evidence was drawn from; a rebuild reuses evidence whose inputs match."""

    format: str
    recipe_sha256: str
    base_fingerprint: str
    delta_sha256: str
    adapter_sha256: str | None = None


class EvidenceEdit(RecordPart):
    """One edit's evidence: its index, label and kind, the score that measures its success
    (``[score, sign]``) and each prompt set's measurements, by set name."""

    edit: int
    label: str
    kind: str
    success_score: list[str | int]
    sets: dict[str, JsonObject]


class GalleryImage(RecordPart):
    """An edited image the card shows, with its prompt."""

    prompt: str
    image: str


class EvidenceRecord(Record):
    """``evidence.json``: the fixed-seed before/after images' scores and detector rates per
    edit and prompt set, the gallery, the attacks and the verdict on the requirements.
    Files older than the seeds list, the attack table or the requirements read without them.
    """

    FORMAT = "locopack.evidence/1"
    seed: int
    seeds: list[int] | None = None
    steps: int
    guidance: float
    scorer: str
    detectors: list[str] = Field(default_factory=list)
    ssim_threshold: float | None = None
    applied: str
    inputs: EvidenceInputs | None = None
    edits: list[EvidenceEdit]
    gallery: list[GalleryImage] = Field(default_factory=list)
    attacks: JsonObject | None = None
    attack: JsonObject | None = None
    requirements: JsonObject | None = None
    summary_chart: str | None = None

    def all_seeds(self) -> list[int]:
        """The seeds every prompt was drawn with (older files name the first only)."""
        return self.seeds or [self.seed]
