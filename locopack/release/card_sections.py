"""The values of the card's evidence sections: efficacy, specificity and robustness.

Each section gives its numbers (from ``evidence.json``), its images (grids in ``evidence/``)
and one sentence on what it does not show; the sentences and the tables' layout are in the
card's template, the functions here compute the rows (numbers formatted, recipe text escaped
through :mod:`.markdown_text`).  :func:`card_images` lists the images they refer to, for the
card to check they are there.
"""

from __future__ import annotations

import statistics

from ..evidence.charts import SUMMARY_CHART
from . import markdown_text as md

SET_NAMES = {
    "edited": "edited prompts",
    "held_out": "held-out paraphrases",
    "preserve": "preserve prompts",
    "unrelated": "unrelated prompts",
}
EFFICACY_SETS = ("edited", "held_out")
SPECIFICITY_SETS = ("preserve", "unrelated")

Row = dict[str, str]


def card_images(evidence: dict) -> list[str]:
    """Every image the evidence sections show."""
    names = [SUMMARY_CHART] if evidence.get("summary_chart") else []
    names += [a["grid"] for a in (evidence.get("attack") or {"edits": []})["edits"]]
    for edit in evidence["edits"]:
        for item in edit["sets"].values():
            names += [item["grid"]] + ([item["flagged_grid"]] if item.get("flagged_grid") else [])
    return names


def _value(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if kind == "rate" else f"{value:.2f}"


def _moves(found: dict, key: str) -> str:
    before, after = found["before"].get(key), found["after"].get(key)
    if before is None and after is None:
        return "–"
    return f"{_value(before, found['kind'])} → {_value(after, found['kind'])}"


def _sets(evidence: dict, names: tuple[str, ...]) -> list[tuple[dict, str, dict]]:
    """``(edit, set name, set)`` for each of the edits' sets named in ``names``."""
    return [
        (edit, name, item)
        for edit in evidence["edits"]
        for name, item in edit["sets"].items()
        if name in names
    ]


def _clip_rows(evidence: dict, names: tuple[str, ...]) -> list[Row]:
    rows = []
    for edit, name, item in _sets(evidence, names):
        s = item["summary"]
        cells = {
            k: f"{s['before'][k]['mean']:.2f} ± {s['before'][k]['std']:.2f} → "
            f"{s['after'][k]['mean']:.2f} ± {s['after'][k]['std']:.2f}"
            for k in ("original", "target")
        }
        rows.append(_row(edit, name, n=str(len(item["prompts"])), **cells))
    return rows


def _detector_rows(evidence: dict, names: tuple[str, ...]) -> list[Row]:
    rows = []
    for edit, name, item in _sets(evidence, names):
        for detector, found in item.get("detectors", {}).items():
            if detector == "clip":  # its figures are the CLIP table's
                continue
            cells = {k: _moves(found, k) for k in ("concept", "prompt", "target")}
            rows.append(_row(edit, name, detector=md.inline(detector), **cells))
    return rows


def _row(edit: dict, set_name: str, /, **cells: str) -> Row:
    return {"label": md.inline(edit["label"]), "set": SET_NAMES.get(set_name, set_name), **cells}


def _grids(evidence: dict, names: tuple[str, ...]) -> list[Row]:
    return [_row(e, n, name=n, image=item["grid"]) for e, n, item in _sets(evidence, names)]


def efficacy(evidence: dict) -> dict[str, list[Row]]:
    """The efficacy section: CLIP and detector rows of the edited and held-out sets, grids."""
    return {
        "clip": _clip_rows(evidence, EFFICACY_SETS),
        "detectors": _detector_rows(evidence, EFFICACY_SETS),
        "grids": _grids(evidence, EFFICACY_SETS),
    }


def specificity(evidence: dict) -> dict[str, object] | None:
    """The specificity section (None when no set was compared pixel by pixel): image change
    per preserve and unrelated set, the prompts flagged, CLIP and detector rows, grids."""
    change, flagged, flagged_grids = [], [], []
    for edit, name, item in _sets(evidence, SPECIFICITY_SETS):
        if "change" not in item:
            continue
        ssim, psnr = item["change"]["ssim"], item["change"]["psnr"]
        change.append(
            _row(
                edit,
                name,
                n=str(len(item["prompts"])),
                ssim=f"{statistics.fmean(ssim):.3f}",
                lowest=f"{min(ssim):.3f}",
                psnr=f"{statistics.fmean(psnr):.1f}",
                flagged=str(len(item["flagged"])),
            )
        )
        for prompt in item["flagged"]:
            i = item["prompts"].index(prompt)
            flagged.append(
                _row(
                    edit, name, prompt=md.code(prompt), ssim=f"{ssim[i]:.3f}", psnr=f"{psnr[i]:.1f}"
                )
            )
        if item.get("flagged_grid"):
            flagged_grids.append({"name": name, "image": item["flagged_grid"]})
    if not change:
        return None
    return {
        "threshold": str(evidence.get("ssim_threshold")),
        "change": change,
        "clip": _clip_rows(evidence, SPECIFICITY_SETS),
        "detectors": _detector_rows(evidence, SPECIFICITY_SETS),
        "flagged": flagged,
        "flagged_grids": flagged_grids,
        "grids": _grids(evidence, SPECIFICITY_SETS),
    }


def _protocol(protocol: dict) -> dict[str, object]:
    threshold = protocol["threshold"]
    return {
        "rate": protocol["kind"] == "rate",
        "detector": md.inline(protocol["detector"]),
        "numeric": isinstance(threshold, int | float),
        "threshold": md.inline(str(threshold)),
        "version": md.inline(str(protocol["version"])),
        "seeds": protocol["seeds"],
        "steps": str(protocol["steps"]),
        "guidance": f"{protocol['guidance']:g}",
    }


def _attacks(evidence: dict, attacks: dict) -> dict[str, object]:
    kind = attacks["protocol"]["kind"]
    rows, found = [], []
    for r in attacks["rows"]:
        chance = r.get("chance")
        named = {"label": md.inline(r["label"]), "name": md.inline(r["name"])}
        rows.append(
            {
                **named,
                "budget": md.inline(r["budget"]),
                "base": _value(r["base"], kind),
                "edited": _value(r["edited"], kind),
                "chance": f"{_value(chance['base'], kind)} / {_value(chance['edited'], kind)}"
                if chance
                else "–",
            }
        )
        if r.get("found"):
            found.append(
                {
                    **named,
                    "edited": md.code(r["found"]["edited"]),
                    "base": md.code(r["found"]["base"]),
                }
            )
    return {
        "protocol": _protocol(attacks["protocol"]),
        "rows": rows,
        "found": found,
        "grids": [a["grid"] for a in (evidence.get("attack") or {"edits": []})["edits"]],
    }


def robustness(evidence: dict) -> dict[str, object]:
    """The robustness section: the held-out sets' CLIP move, the attacks skipped, and the
    attack table (None when no attack ran)."""
    held = [
        {
            "label": md.inline(e["label"]),
            "before": f"{e['sets']['held_out']['summary']['before']['original']['mean']:.2f}",
            "after": f"{e['sets']['held_out']['summary']['after']['original']['mean']:.2f}",
        }
        for e in evidence["edits"]
        if "held_out" in e["sets"]
    ]
    attacks = evidence.get("attacks") or {"rows": [], "skipped": []}
    skipped = [  # erase edits an attack could not run on
        {key: md.inline(item[key]) for key in ("name", "label", "why")}
        for item in attacks["skipped"]
    ]
    table = _attacks(evidence, attacks) if attacks["rows"] else None
    return {"held": held, "skipped": skipped, "attacks": table}


def evidence_values(evidence: dict) -> dict[str, object]:
    """The values of the three sections, by the names the card's template uses."""
    return {
        "efficacy": efficacy(evidence),
        "specificity": specificity(evidence),
        "robustness": robustness(evidence),
    }
