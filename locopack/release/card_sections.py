"""The card's evidence sections: efficacy, specificity and robustness.

Each section gives its numbers (from ``evidence.json``), its images (grids in ``evidence/``)
and one sentence on what it does not show.  :func:`evidence_sections` returns their Markdown;
:func:`card_images` the images they refer to, for the card to check they are there.
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


def _clip_rows(evidence: dict, names: tuple[str, ...]) -> list[str]:
    lines = [
        "| edit | prompt set | n | CLIP to original: before → after | "
        "CLIP to target: before → after |",
        "|---|---|---|---|---|",
    ]
    for edit in evidence["edits"]:
        for name, item in edit["sets"].items():
            if name not in names:
                continue
            s = item["summary"]
            cells = [
                f"{s['before'][k]['mean']:.2f} ± {s['before'][k]['std']:.2f} → "
                f"{s['after'][k]['mean']:.2f} ± {s['after'][k]['std']:.2f}"
                for k in ("original", "target")
            ]
            lines.append(
                f"| {md.inline(edit['label'])} | {SET_NAMES.get(name, name)} | "
                f"{len(item['prompts'])} | {cells[0]} | {cells[1]} |"
            )
    return lines


def _detector_rows(evidence: dict, names: tuple[str, ...]) -> list[str]:
    rows = []
    for edit in evidence["edits"]:
        for name, item in edit["sets"].items():
            for detector, found in item.get("detectors", {}).items() if name in names else ():
                if detector == "clip":  # its figures are the CLIP table's
                    continue
                cells = " | ".join(_moves(found, k) for k in ("concept", "prompt", "target"))
                rows.append(
                    f"| {md.inline(edit['label'])} | {SET_NAMES.get(name, name)} | "
                    f"{md.inline(detector)} | {cells} |"
                )
    if not rows:
        return []
    head = (
        "| edit | prompt set | detector | concept seen: before → after | "
        "prompt shown: before → after | target shown: before → after |"
    )
    return ["", head, "|---|---|---|---|---|---|", *rows]


def _grids(evidence: dict, names: tuple[str, ...]) -> list[str]:
    return [
        f"**{md.inline(e['label'])}: {SET_NAMES.get(n, n)}**\n\n![{n}]({item['grid']})\n"
        for e in evidence["edits"]
        for n, item in e["sets"].items()
        if n in names
    ]


def _images(evidence: dict) -> str:
    seeds = evidence.get("seeds", [evidence["seed"]])
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"


def _efficacy(evidence: dict) -> list[str]:
    return [
        "### Efficacy: is the concept gone?",
        "",
        f"On the edited prompts and on held-out paraphrases the edit never saw, "
        f"{_images(evidence)} per prompt; CLIP scores are means over the seeds, detector "
        "figures are shares of images (the concept seen; what the prompt, or the edit's "
        "target, asks shown).",
        "",
        *_clip_rows(evidence, EFFICACY_SETS),
        *_detector_rows(evidence, EFFICACY_SETS),
        "",
        *_grids(evidence, EFFICACY_SETS),
        "*Not shown:* a concept the detectors do not recognise, or one asked for in words "
        "these prompts do not use, is not counted here.",
    ]


def _specificity(evidence: dict) -> list[str]:
    threshold = evidence.get("ssim_threshold")
    table = ["| edit | prompt set | n | SSIM mean (lowest) | PSNR mean, dB | flagged |"]
    table.append("|---|---|---|---|---|---|")
    flagged, grids = [], []
    for edit in evidence["edits"]:
        for name, item in edit["sets"].items():
            if name not in SPECIFICITY_SETS or "change" not in item:
                continue
            ssim, psnr = item["change"]["ssim"], item["change"]["psnr"]
            table.append(
                f"| {md.inline(edit['label'])} | {SET_NAMES[name]} | {len(item['prompts'])} | "
                f"{statistics.fmean(ssim):.3f} ({min(ssim):.3f}) | "
                f"{statistics.fmean(psnr):.1f} | {len(item['flagged'])} |"
            )
            for prompt in item["flagged"]:
                i = item["prompts"].index(prompt)
                flagged.append(
                    f"- {md.code(prompt)} ({md.inline(edit['label'])}, {SET_NAMES[name]}): "
                    f"SSIM {ssim[i]:.3f}, "
                    f"PSNR {psnr[i]:.1f} dB"
                )
            if item.get("flagged_grid"):
                grids.append(f"![flagged {name}]({item['flagged_grid']})\n")
    if len(table) == 2:
        return []
    verdict = (
        ["Prompts whose images changed beyond the threshold (every seed below):", "", *flagged]
        if flagged
        else ["No preserve or unrelated prompt fell below the threshold."]
    )
    return [
        "### Specificity: does everything else stay?",
        "",
        "Before and after images of the same seed compared pixel by pixel (SSIM, 1 = identical; "
        f"PSNR); a prompt is flagged when its mean SSIM is below {threshold}.",
        "",
        *table,
        "",
        *_clip_rows(evidence, SPECIFICITY_SETS),
        *_detector_rows(evidence, SPECIFICITY_SETS),
        "",
        *verdict,
        "",
        *grids,
        *_grids(evidence, SPECIFICITY_SETS),
        "*Not shown:* prompts not listed here, and changes of meaning that keep the pixels "
        "close (a small object swapped), are not measured by image similarity.",
    ]


def _protocol(protocol: dict) -> str:
    detector = md.inline(protocol["detector"])
    if protocol["kind"] != "rate":
        judged = f"judged by the {detector} score to the edit's first prompt (no rate detector)"
    else:
        threshold = protocol["threshold"]
        threshold = f"threshold {threshold}" if isinstance(threshold, int | float) else threshold
        version = md.inline(protocol["version"])
        judged = f"judged by {detector} ({md.inline(str(threshold))}; {version})"
    seeds = protocol["seeds"]
    return (
        f"Each attack ran once against the base model and once against the edited one, "
        f"{judged}, on images of {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}) per prompt, {protocol['steps']} steps, guidance "
        f"{protocol['guidance']:g}.  Success is the share of images showing the concept on the "
        "model attacked; chance is where the attack started (the prompt without the concept, "
        "or random words), on base / on edited."
    )


def _attack_table(attacks: dict) -> list[str]:
    kind = attacks["protocol"]["kind"]
    lines = [
        _protocol(attacks["protocol"]),
        "",
        "| edit | attack | budget | success on base | success on edited | chance |",
        "|---|---|---|---|---|---|",
    ]
    found = []
    for r in attacks["rows"]:
        chance = r.get("chance")
        chance = (
            f"{_value(chance['base'], kind)} / {_value(chance['edited'], kind)}" if chance else "–"
        )
        lines.append(
            f"| {md.inline(r['label'])} | {md.inline(r['name'])} | {md.inline(r['budget'])} | "
            f"{_value(r['base'], kind)} | {_value(r['edited'], kind)} | {chance} |"
        )
        if r.get("found"):
            found.append(
                f"- {md.inline(r['name'])} ({md.inline(r['label'])}): against the edited model "
                f"{md.code(r['found']['edited'])}, against the base {md.code(r['found']['base'])}"
            )
    if found:
        lines += ["", "Prompts the attacks found:", "", *found]
    return lines


def _robustness(evidence: dict) -> list[str]:
    held = [
        (e["label"], e["sets"]["held_out"]) for e in evidence["edits"] if "held_out" in e["sets"]
    ]
    lines = ["### Robustness: can another prompt bring it back?", ""]
    if held:
        lines += [
            "The held-out paraphrases are attack prompts the edit never saw: "
            + "; ".join(
                f"*{md.inline(label)}*: CLIP to the original "
                f"{item['summary']['before']['original']['mean']:.2f} → "
                f"{item['summary']['after']['original']['mean']:.2f}"
                for label, item in held
            )
            + " (detector figures in the efficacy table).",
            "",
        ]
    attacks = evidence.get("attacks") or {"rows": [], "skipped": []}
    for item in attacks["skipped"]:  # erase edits an attack could not run on
        label, why = md.inline(item["label"]), md.inline(item["why"])
        lines += [f"No {md.inline(item['name'])} attack was run on *{label}*: {why}.", ""]
    if attacks["rows"]:
        lines += [*_attack_table(attacks), ""]
        grids = [a["grid"] for a in (evidence.get("attack") or {"edits": []})["edits"]]
        lines += [f"![word search]({g})\n" for g in grids]
        lines.append(
            "*Not shown:* learned concept embeddings (concept inversion), longer searches than "
            "these budgets and fine-tuning were not tried; a soft prompt's embeddings are a "
            "white-box bound no user can type."
        )
    else:
        lines.append(
            "*Not shown:* no attack was run on this release; prompts found by searching "
            "(other words that route around the edited layers) are not covered."
        )
    return lines


def evidence_sections(evidence: dict) -> str:
    """The Markdown of the three sections (with the summary chart first, when drawn)."""
    chart = [f"![summary]({SUMMARY_CHART})", ""] if evidence.get("summary_chart") else []
    sections = [*chart, *_efficacy(evidence), "", *_specificity(evidence), ""]
    return "\n".join(sections + _robustness(evidence)) + "\n"
