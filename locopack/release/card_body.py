"""The values of the card's own sections: what was edited, where, the edit's settings, how to
use it and its limitations.

They come from the recipe and the files the stages wrote (``edit.json``, the adapter's
manifest, ``localization.json``); numbers are formatted and recipe text escaped here
(:mod:`.markdown_text`), the sentences around them are in the card's template.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..control_chars import strip_controls
from ..evidence.charts import SUMMARY_CHART
from ..evidence.detectors import is_plugin
from . import markdown_text as md

if TYPE_CHECKING:
    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe


def token_rows_text(parts: list[dict]) -> str:
    """One edit prompt's ``token_rows`` (:mod:`locopack.edit.tokens`) in words: ``CLIP 1-2 and
    4 (last: 4), T5 0-1 and 3 (last: 3)``."""
    words = []
    for part in parts:
        runs: list[list[int]] = []
        for i in part["positions"]:
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        spans = [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs]
        last = f" (last: {part['last']})" if "last" in part else ""
        words.append(f"{md.inline(part['encoder'])} {' and '.join(spans)}{last}")
    return ", ".join(words)


def edits(recipe: Recipe) -> list[dict[str, str]]:
    """One row per edit of the recipe: its kind, subject, label, targets and prompt count."""
    return [
        {
            "kind": e.kind,
            "subject": e.subject,
            "label": md.inline(e.label),
            "targets": ", ".join(md.inline(repr(t)) for t in dict.fromkeys(e.targets_expanded())),
            "prompts": str(len(e.prompts)),
        }
        for e in recipe.edits
    ]


def localization_values(localization: dict | None) -> dict[str, object] | None:
    """LocoGen's scores (windows tried, the chosen one's score against the baselines) and the
    editable selection's trail; None without ``localization.json``."""
    if not localization:
        return None
    chosen = localization["candidates"][localization["chosen"]]
    return {
        "windows": str(len(localization["candidates"])),
        "window": str(localization["window"]),
        "mode": str(localization["mode"]),
        "chosen": f"{chosen['mean']:.2f}",
        "baseline": f"{localization['baseline']['mean']:.2f}",
        "all_sites": f"{localization['all_sites']['mean']:.2f}",
        "trail": _trail(localization),
    }


def _trail(localization: dict) -> dict[str, object] | None:
    """The editable selection's trail (``select: editable``): one row per set of sites tried
    (its sites, the step that made it, what its edit measured); None for ``select: score``."""
    from ..localize.plot import short_site

    trail = localization.get("trail")
    if not trail:
        return None
    rows = []
    for step in trail:
        changed = step.get("removed") or []
        how = "left out " if changed else "added "
        how += (
            ", ".join(short_site(s) for s in changed)
            if changed
            else (f"window {step['added']}" if step["added"] is not None else "every site")
        )
        measured = "; ".join(
            f"{c['set'].replace('_', '-')} {c['requirement'].replace('_', ' ')} "
            f"{100 * c['measured']:.0f}% ({c['rule']} {100 * c['threshold']:.0f}%)"
            for c in step["checks"]
        )
        rows.append(
            {
                "count": str(len(step["sites"])),
                "sites": md.inline(", ".join(short_site(s) for s in step["sites"])),
                "step": md.inline(how),
                "measured": md.inline(measured or "no efficacy requirement in force"),
                "met": bool(step["met"]),
            }
        )
    kept = localization.get("selected") or []
    check = localization.get("check") or {}
    return {
        "rows": rows,
        "met": any(s["met"] and s["sites"] == kept for s in trail),
        "kept": str(len(kept)),
        "count": str(len(localization["site_paths"])),
        "seeds": str(check.get("seeds")),
        "judges": md.inline(", ".join(dict.fromkeys(check.get("judges", [])))),
    }


def _family(prov: dict) -> type[ModelFamily] | None:
    """The release's model family, or None where the delta names none that is known."""
    from ..models.registry import FAMILIES

    return FAMILIES.get(prov.get("family", ""))


def site_kind(prov: dict) -> str:
    """What the edited sites are called for the release's family."""
    from ..models.text_sites import CROSS_ATTENTION

    found = _family(prov)
    return (found.text_sites if found is not None else CROSS_ATTENTION).described_as


def text_paths(localization: dict | None, prov: dict) -> dict[str, object]:
    """What the card must say about text paths the edit leaves alone or changes besides the
    sites: the pooled vector of joint-attention transformers (its score move alone and the
    sites', the reference lines sharing their settings), the family's own note (text refiner
    sites), FLUX single-stream sites."""
    pooled = None
    if localization and localization.get("pooled_only") is not None:
        base = localization["baseline"]["mean"]
        alone = localization["pooled_only"]["mean"] - base
        sites = localization["all_sites"]["mean"] - base
        pooled = {
            "alone": f"{alone:+.2f}",
            "sites": f"{sites:+.2f}",
            "dominates": abs(alone) > abs(sites),
            "ratio": f"{abs(alone) / abs(sites):.0f}" if sites and abs(alone) > abs(sites) else "",
        }
    found = _family(prov)
    return {
        "pooled": pooled,
        "family_note": (found.card_note if found is not None else None) or "",
        "image_sites": ", ".join(md.code(path) for path in prov.get("image_sites") or []),
    }


def settings(recipe: Recipe, edit: dict, manifest: dict) -> dict[str, str]:
    """The edit's settings, its errors and the versions it was made with."""
    prov = manifest["provenance"]
    neighbours = prov.get("neighbours") and recipe.edit.neighbours
    rows = "; ".join(
        f"{md.code(r['prompt'])}: {token_rows_text(r['parts'])}" for r in prov.get("token_rows", [])
    )
    return {
        "lambda": str(prov["lambda"]),
        "matrices": str(prov["matrices"]),
        "tokens": str(prov["tokens"]),
        "preserve_weight": str(prov["preserve_weight"]),
        "columns": str(prov["columns"]),
        "preserve_columns": str(prov["preserve_columns"]),
        "neighbours": str(len(prov["neighbours"])) if neighbours else "",
        "neighbour_source": md.code(recipe.edit.neighbours.source) if neighbours else "",
        "token_rows": rows,
        "edit_error": f"{max(m['edit_error'] for m in edit['modules'].values()):.2e}",
        "ranks": str(sorted({m["rank"] for m in manifest["modules"].values()})),
        "lora_error": f"{manifest['max_relative_error']:.1e}",
        "base_fingerprint": str(prov["base_fingerprint"]),
        "recipe_sha256": str(prov["recipe_sha256"]),
        "versions": ", ".join(f"{k} {v}" for k, v in sorted(prov.get("versions", {}).items())),
    }


def evidence_header(recipe: Recipe, evidence: dict) -> dict[str, object]:
    """How the evidence was drawn: seeds, steps, guidance, scorer, how the edit was applied
    and the plug-in detectors (the user's code, run with ``--allow-code``), if any."""
    plugins = [d.name for d in recipe.evidence.detectors if is_plugin(d.name)]
    return {
        "seeds": evidence.get("seeds", [evidence["seed"]]),
        "steps": str(evidence["steps"]),
        "guidance": str(evidence["guidance"]),
        "scorer": md.code(evidence["scorer"]),
        "applied": str(evidence["applied"]),
        "plugins": ", ".join(md.code(name) for name in plugins),
        "chart": SUMMARY_CHART if evidence.get("summary_chart") else "",
    }


def usage(base: str, prompt: str) -> dict[str, str]:
    """The "how to use" snippet's values: JSON string literals are Python ones, whatever they
    hold; the fence outlasts any backticks in them."""
    base_text = strip_controls(json.dumps(base, ensure_ascii=False))
    prompt_text = strip_controls(json.dumps(prompt, ensure_ascii=False))
    return {
        "base": base_text,
        "prompt": prompt_text,
        "fence": md.fence(f"{base_text}\n{prompt_text}"),
    }


def lagging(evidence: dict) -> list[dict[str, str]]:
    """Held-out prompts whose score moved less than half as much as the edited prompts'."""
    notes = []
    for edit in evidence["edits"]:
        sets = edit["sets"]
        if "edited" not in sets or "held_out" not in sets:
            continue
        key, sign = edit["success_score"]

        def moves(item: dict, key: str = key, sign: int = sign) -> list[float]:
            before, after = item["scores"]["before"][key], item["scores"]["after"][key]
            return [sign * (a - b) for a, b in zip(after, before, strict=True)]

        edited = moves(sets["edited"])
        typical = sum(edited) / len(edited)
        held = sets["held_out"]
        for prompt, move in zip(held["prompts"], moves(held), strict=True):
            if move < 0.5 * typical:
                notes.append(
                    {
                        "prompt": md.code(prompt),
                        "label": md.inline(edit["label"]),
                        "move": f"{move:+.2f}",
                        "typical": f"{typical:+.2f}",
                    }
                )
    return notes
