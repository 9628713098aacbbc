"""The model card's account of a robust erase (``edit.robust``): one row per round."""

from __future__ import annotations

from . import markdown_text as md


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def robust_rounds(edit_report: dict) -> dict[str, object] | None:
    """The values of the card's robust-erase section, from the ``robust`` section of
    ``edit.json`` (one row per round and edit); None for a plain edit."""
    robust = edit_report.get("robust")
    if not robust:
        return None
    rows = []
    for item in robust["rounds"]:
        for entry in item["edits"]:
            found = [p for f in item["found"] if f["edit"] == entry["edit"] for p in f["prompts"]]
            rows.append(
                {
                    "round": str(item["round"]),
                    "label": md.inline(entry["label"]),
                    "best": md.code(found[0], cell=True) if found else "–",
                    "success": _rate(entry["success_before"]),
                    "rows_added": str(item["rows_added"]),
                    "state_columns": str(item.get("state_columns_added", 0)),
                    "after": _rate(entry.get("success_after")),
                    "bar": _rate(entry["bar"]),
                }
            )
    return {
        "attacks": md.inline(", ".join(robust["attacks"])),
        "prompts": str(robust["prompts"]),
        "rounds_allowed": str(robust["rounds_allowed"]),
        "met": bool(robust["met"]),
        # a round's search cut short by its time guard depends on the machine's speed
        "guarded": not robust.get("deterministic", True),
        "seeds": str(robust["seeds"]),
        "judges": md.inline(", ".join(dict.fromkeys(robust["judges"]))),
        "rows": rows,
    }
