"""The model card's account of a robust erase (``edit.robust``): one row per round."""

from __future__ import annotations

from typing import Any

from . import markdown_text as md


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def robust_rounds(edit_report: dict[str, Any]) -> str:
    """The rounds recorded in ``edit.json``'s ``robust`` section as Markdown; empty without."""
    robust = edit_report.get("robust")
    if not robust:
        return ""
    rows = []
    for item in robust["rounds"]:
        for entry in item["edits"]:
            found = [p for f in item["found"] if f["edit"] == entry["edit"] for p in f["prompts"]]
            best = md.code(found[0], cell=True) if found else "–"
            rows.append(
                f"| {item['round']} | {md.inline(entry['label'])} | {best} | "
                f"{_rate(entry['success_before'])} | {item['rows_added']} | "
                f"{_rate(entry.get('success_after'))} | {_rate(entry['bar'])} |"
            )
    verdict = "held" if robust["met"] else "did not hold"
    guard = (
        ""
        if robust.get("deterministic", True)
        else " A round's search stopped on its time guard (`edit.robust.seconds`) before its "
        "budget, so these rounds depend on the speed of the machine that built them."
    )
    attacks = md.inline(", ".join(robust["attacks"]))
    return (
        "\n### Robust erase\n\n"
        f"After LocoEdit, the edited model was attacked ({attacks}) "
        f"and the {robust['prompts']} best prompts found per edit were added as edit rows mapped "
        f"to the edit's target, then solved again, for at most {robust['rounds_allowed']} rounds; "
        f"the last row is a fresh attack on the final edit, where the bar {verdict}. Success: "
        f"the concept's rate on the best found prompt (seeds {robust['seeds']}, judged by "
        f"{md.inline(', '.join(dict.fromkeys(robust['judges'])))}); *after*: the same prompts "
        "once the round's rows were solved in." + guard + "\n\n"
        "| round | edit | best prompt found | success | rows added | after | bar |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
