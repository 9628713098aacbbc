"""A whole release on the twin: build, card, history, audit, tampering, stacking, resuming."""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.errors import ExportError
from locopack.pipeline.reproduce import Reproduce
from locopack.release.audit import audit_folder
from locopack.release.card import TEMPLATE, build_card, write_card
from locopack.release.history import read_history

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "card_twin_sd1.md"
#: the same card with its records changed to take every branch (see _take_every_branch)
GOLDEN_BRANCHES = GOLDEN.with_name("card_twin_sd1_branches.md")
RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()


def _write_recipe(folder: Path, base: str, name: str, extra: str = "") -> Path:
    text = RECIPE.replace("./out/tiny-sd1/scorer", str(folder / "scorer"))
    text = text.replace("./out/tiny-sd1", base).replace("twin-sd1-erase-van-gogh", name)
    path = folder / f"{name}.yaml"
    path.write_text(text + extra)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A twin with its scorer, and a first release built with a merged checkpoint."""
    root = tmp_path_factory.mktemp("release")
    runner = CliRunner()
    result = runner.invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")])
    assert result.exit_code == 0, result.output
    shutil.copytree(root / "twin" / "scorer", root / "scorer")
    recipe = _write_recipe(
        root, str(root / "twin"), "first", "export:\n  merged: true\n  kohya: true\n"
    )
    result = runner.invoke(cli, ["build", str(recipe), "--out", str(root / "first")])
    assert result.exit_code == 0, result.output
    return root


def _copy(workspace: Path, tmp_path: Path, name: str = "first") -> Path:
    target = tmp_path / name
    shutil.copytree(workspace / name, target)
    return target


def test_build_writes_a_complete_release(workspace):
    out = workspace / "first"
    for name in (
        "recipe.yaml",
        "localization.json",
        "localization.png",
        "delta.safetensors",
        "edit.json",
        "pytorch_lora_weights.safetensors",
        "lora_manifest.json",
        "lora_kohya.safetensors",
        "evidence.json",
        "README.md",
        "history.jsonl",
        "merged/model_index.json",
        "merged/history.jsonl",
    ):
        assert (out / name).is_file(), name
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["applied"] == "adapter"
    sets = evidence["edits"][0]["sets"]
    assert {"edited", "held_out", "preserve", "unrelated"} <= set(sets)
    for item in sets.values():
        assert (out / item["grid"]).read_bytes()[:4] == b"\x89PNG"
        assert len(item["scores"]["before"]["original"]) == len(item["prompts"])
    assert audit_folder(out).ok


def test_card_parses_and_carries_the_metadata(workspace):
    card = ModelCard.load(workspace / "first" / "README.md")
    data = card.data.to_dict()
    assert "base_model" not in data  # a local base is no Hub repo; the body names it
    assert str(workspace / "twin") in card.text
    assert data["library_name"] == "diffusers"
    assert {"locopack", "lora", "text-to-image", "concept-erasure", "sd1"} <= set(data["tags"])
    assert [w["text"] for w in data["widget"]] == sorted(
        ["a painting in the style of van gogh", "van gogh starry night", "a house by van gogh"]
    )
    text = card.text
    assert "## Limitations" in text and "```yaml" in text
    assert "name: first" in text and "prompts_per_edit: 3" in text  # the full recipe
    assert "pytorch_lora_weights.safetensors` | `" in text  # the hash table


def _normalized(text: str, workspace: Path) -> str:
    text = text.replace(str(workspace), "<workspace>")
    text = re.sub(r"[0-9a-f]{64}", "<sha256>", text)
    text = re.sub(r"versions: .*", "versions: <versions>", text)
    text = re.sub(r"-?\d+\.\d+(e[-+]\d+)?", "<num>", text)
    return text


def test_card_text_matches_the_golden_file(workspace):
    text, _ = build_card(workspace / "first")
    normalized = _normalized(text, workspace)
    if not GOLDEN.exists():  # first run writes it; review the diff like any other change
        GOLDEN.write_text(normalized)
    golden = GOLDEN.read_text()
    diff = difflib.unified_diff(golden.splitlines(), normalized.splitlines(), lineterm="")
    assert normalized == golden, "\n".join(diff)


def test_the_card_template_ships_in_the_wheel():
    """pyproject's package data names the template (setuptools leaves other files out)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = found["package-data"]["locopack.release"]
    name = TEMPLATE.relative_to(ROOT / "locopack" / "release").as_posix()
    assert TEMPLATE.is_file() and any(fnmatch.fnmatch(name, p) for p in patterns)


def _take_every_branch(out: Path) -> None:
    """Change the records of a copied release so that its card takes the branches the twin's
    build does not: a rate detector, flagged prompts, missed requirements, three seeds, a rate
    attack with an edit skipped, a robust erase, FLUX.2 (joint attention, its note, a pooled
    path that outweighs the sites, single-stream sites), the sets of sites an editable
    selection tried, and a held-out prompt that lagged."""
    records = {name: json.loads((out / name).read_text()) for name in BRANCH_RECORDS}
    evidence, edit = records["evidence.json"], records["edit.json"]
    evidence["seeds"] = [0, 1, 2]
    sets = evidence["edits"][0]["sets"]
    for item in sets.values():
        item["detectors"]["toy"] = {"kind": "rate", "before": {"concept": 0.5, "prompt": 1.0},
                                    "after": {"concept": 0.0, "target": 0.75}}  # fmt: skip
    sets["preserve"]["flagged"] = list(sets["preserve"]["prompts"])
    sets["preserve"]["flagged_grid"] = sets["preserve"]["grid"]
    held = sets["held_out"]["scores"]
    held["after"]["original"] = [b + 50 for b in held["before"]["original"]]
    needs = evidence["requirements"]
    needs.update(met=False, unmet=["efficacy (van gogh): 50% > 10%"], not_judged=[])
    needs["items"][0].update(measured=0.5, met=False)
    attacks = evidence["attacks"]
    attacks["protocol"].update(kind="rate", detector="toy", threshold=0.6, version="v <1>")
    attacks["skipped"] = [{"name": "word search", "label": "van gogh", "why": "no <rate> judge"}]
    attacks["rows"][0]["chance"] = None
    localization = records["localization.json"]
    localization["pooled_only"] = localization["baseline"] | {
        "mean": localization["baseline"]["mean"] + 5.0
    }
    localization["all_sites"]["mean"] = localization["baseline"]["mean"] + 1.0
    paths = localization["site_paths"]
    check = {"set": "held_out", "requirement": "concept_left", "rule": "at most", "threshold": 0.1}
    localization["trail"] = [
        {"sites": paths[:2], "added": 3, "met": False, "checks": [{**check, "measured": 0.5}]},
        {"sites": paths[:5], "added": None, "met": True, "checks": [{**check, "measured": 0.0}]},
        {"sites": paths[1:5], "added": None, "removed": paths[:1], "met": True, "checks": []},
    ]
    localization.update(selected=paths[1:5], check={"seeds": [0, 1], "judges": ["toy", "toy"]})
    provenance = records["lora_manifest.json"]["provenance"]
    provenance.update(family="flux2", image_sites=["single_transformer_blocks.0.attn"])
    first = {"edit": 0, "label": "van gogh", "success_before": 0.5, "success_after": 0.1}
    edit["robust"] = {
        "rounds": [{"round": 1, "rows_added": 1, "found": [{"edit": 0, "prompts": ["a | `b`"]}],
                    "edits": [{**first, "bar": 0.2}]}],
        "met": False, "attacks": ["search"], "prompts": 1, "rounds_allowed": 2, "seeds": [0],
        "judges": ["toy", "toy"],
    }  # fmt: skip
    for name, record in records.items():
        (out / name).write_text(json.dumps(record))


BRANCH_RECORDS = ("evidence.json", "edit.json", "localization.json", "lora_manifest.json")


def test_card_branches_match_their_golden_file(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    _take_every_branch(out)
    text, _ = build_card(out, allowed_unmet=True, signer="Sigstore publisher@example.com")
    normalized = _normalized(text, workspace)
    golden = GOLDEN_BRANCHES.read_text()
    diff = difflib.unified_diff(golden.splitlines(), normalized.splitlines(), lineterm="")
    assert normalized == golden, "\n".join(diff)


def test_card_command_rebuilds_and_names_a_missing_file(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    before = (out / "README.md").read_text()
    (out / "README.md").unlink()
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "README.md").read_text() == before
    (out / "README.md").unlink()
    (out / "evidence" / "edit0_held_out.png").unlink()
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert result.exit_code == 1
    assert "evidence/edit0_held_out.png is missing" in result.output
    assert not (out / "README.md").exists()
    (out / "localization.json").write_text('{"format": ')
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert result.exit_code == 1 and "localization.json: not valid JSON" in result.output
    (out / "localization.json").unlink()
    (out / "evidence.json").write_text('{"edits": [{"sets": {"edit": {}}}]}')
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert result.exit_code == 1 and "does not hold what locopack writes" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (out / "evidence.json").unlink()
    with pytest.raises(ExportError, match="evidence.json is missing"):
        write_card(out)


def _tamper(out: Path, rng: random.Random) -> tuple[str, str]:
    """Damage ``out`` at random; returns what was done and the name the audit must report."""
    lines = (out / "history.jsonl").read_text().splitlines()
    kind = rng.choice(["flip", "flip", "flip", "edit-line", "reorder", "drop", "swap-adapter"])
    if kind == "flip":
        files = sorted(
            p
            for p in out.rglob("*")
            if p.is_file() and p.name != "history.jsonl" and "cache" not in p.parts
        )
        target = rng.choice(files)
        data = bytearray(target.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        return "flip", str(target.relative_to(out))
    if kind == "edit-line":
        i = rng.randrange(len(lines))
        entry = json.loads(lines[i])
        entry["recipe_name"] = entry["recipe_name"] + "x"
        lines[i] = json.dumps(entry, sort_keys=True)
    elif kind == "reorder" and len(lines) > 1:
        lines[0], lines[1] = lines[1], lines[0]
    elif kind == "drop" or kind == "reorder":
        del lines[rng.randrange(len(lines))]
    else:  # another recipe's adapter in place of this one's
        name = "pytorch_lora_weights.safetensors"
        ours = (out / name).read_bytes()
        other = next(p for p in out.parent.glob("adapter-*.safetensors") if p.read_bytes() != ours)
        shutil.copy(other, out / name)
        return "swap adapter", name
    (out / "history.jsonl").write_text("".join(line + "\n" for line in lines))
    return kind, "history.jsonl"


def test_audit_detects_every_tampering(workspace, tmp_path):
    pristine = workspace / "stacked"
    if not pristine.exists():
        test_two_stacked_recipes_audit_as_one_chain(workspace)
    for release in ("first", "stacked"):
        shutil.copy(
            workspace / release / "pytorch_lora_weights.safetensors",
            tmp_path / f"adapter-{release}.safetensors",
        )
    rng = random.Random(0)
    for trial in range(50):
        out = tmp_path / f"trial{trial}"
        shutil.copytree(workspace / "first" if trial % 2 else pristine, out)
        assert audit_folder(out).ok
        what, name = _tamper(out, rng)
        report = audit_folder(out)
        failed = [c for c in report.checks if not c.ok]
        assert failed, f"trial {trial}: {what} {name} went unnoticed"
        assert name in failed[0].detail, (what, name, failed[0].detail)
        shutil.rmtree(out)


def test_two_stacked_recipes_audit_as_one_chain(workspace):
    out = workspace / "stacked"
    if out.exists():
        return
    recipe = _write_recipe(workspace, str(workspace / "first" / "merged"), "second")
    recipe.write_text(
        recipe.read_text()
        .replace("van gogh", "monet")
        .replace("a painting by monet", "a painting by van gogh")
    )
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    entries = read_history(out / "history.jsonl")
    assert [e.recipe_name for e in entries] == ["first", "second"]
    assert entries[1].prev == entries[0].hash
    result = CliRunner().invoke(cli, ["audit", str(out)])
    assert result.exit_code == 0, result.output
    assert "#0  first" in result.output and "#1  second" in result.output


def test_reproduce_passes_untouched_and_fails_on_a_replaced_delta(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    report = audit_folder(out, reproduce=Reproduce.QUICK)
    assert report.ok and "bit-exact" in report.checks[-1].detail
    delta = WeightDelta.load(out / "delta.safetensors")
    scaled = WeightDelta({k: v * 1.5 for k, v in delta.deltas.items()}, delta.provenance)
    scaled.save(out / "delta.safetensors")
    result = CliRunner().invoke(cli, ["audit", str(out), "--reproduce", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert not report["ok"]
    assert any(c["name"] == "delta" and not c["ok"] for c in report["checks"])


def test_rebuild_resumes_from_the_finished_stages(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    delta_hash = WeightDelta.load(out / "delta.safetensors").sha256()
    for name in ("README.md", "history.jsonl", "evidence.json"):
        (out / name).unlink()
    recipe = out / "recipe.yaml"
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert WeightDelta.load(out / "delta.safetensors").sha256() == delta_hash
    assert (out / "README.md").is_file() and audit_folder(out).ok


def test_a_hub_base_is_named_in_the_metadata(workspace, tmp_path, monkeypatch):
    out = _copy(workspace, tmp_path)
    recipe = (out / "recipe.yaml").read_text()
    (out / "recipe.yaml").write_text(
        recipe.replace(f"model: {workspace / 'twin'}", "model: runwayml/stable-diffusion-v1-5")
    )
    _, data = build_card(out)
    assert data["base_model"] == "runwayml/stable-diffusion-v1-5"
    assert data["base_model_relation"] == "finetune"  # a merged checkpoint is released
    assert data.get("license") is None  # the Hub cannot be reached here: none is guessed

    # with `license: inherit` the base's card names it: a local base's README.md
    (workspace / "twin" / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n")
    try:
        assert build_card(_copy(workspace, tmp_path / "again"))[1]["license"] == (
            "creativeml-openrail-m"
        )
    finally:
        (workspace / "twin" / "README.md").unlink()


def test_a_flipped_bit_in_any_file_is_detected(workspace, tmp_path):
    source = workspace / "first"
    files = sorted(
        p.relative_to(source) for p in source.rglob("*") if p.is_file() and "cache" not in p.parts
    )
    assert len(files) > 20
    for i, name in enumerate(files):
        size = (source / name).stat().st_size
        # the low bit anywhere; the high bit (not UTF-8 in a text file) within the first bytes,
        # a safetensors file's JSON header
        flips = {(7 * i) % size: 1, min(size - 1, 8 + (13 * i) % max(1, min(size - 8, 400))): 128}
        for where, bit in flips.items():
            out = tmp_path / f"flip{i}-{where}"
            shutil.copytree(source, out)
            data = bytearray((out / name).read_bytes())
            data[where] ^= bit
            (out / name).write_bytes(bytes(data))
            report = audit_folder(out)
            assert not report.ok, f"a flipped bit at byte {where} of {name} went unnoticed"
            shutil.rmtree(out)


def _generate(model: str, out: Path, *extra: str) -> tuple[int, str]:
    prompt = "a painting of a cat in the style of van gogh"
    result = CliRunner().invoke(
        cli,
        ["generate", "--model", model, "--prompt", prompt, "--steps", "3", "--out", str(out)]
        + list(extra),
    )
    return result.exit_code, result.output


def test_generate_takes_a_pipeline_a_release_or_a_base_with_the_adapter(workspace, tmp_path):
    import numpy as np
    from PIL import Image

    release = workspace / "first"
    runs = {
        "base": [str(workspace / "twin")],
        "merged": [str(release / "merged")],
        "release": [str(release)],
        "adapter": [str(workspace / "twin"), "--adapter", str(release)],
    }
    images = {}
    for name, (model, *extra) in runs.items():
        code, output = _generate(model, tmp_path / f"{name}.png", *extra)
        assert code == 0, output
        images[name] = np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.int16)
    assert (tmp_path / "release.png").read_bytes() == (tmp_path / "merged.png").read_bytes()
    # the random twin's edit moves a few pixels by a level or two; the adapter moves the same
    edit = np.abs(images["base"] - images["merged"]).sum()
    assert edit > 0 and np.abs(images["adapter"] - images["merged"]).sum() < edit / 4

    adapter_only = _copy(workspace, tmp_path)
    shutil.rmtree(adapter_only / "merged")
    code, output = _generate(str(adapter_only), tmp_path / "none.png")
    assert code == 1 and "without a merged checkpoint" in output and "Traceback" not in output
    assert not (tmp_path / "none.png").exists()


def test_audit_reports_foreign_adapter_shapes_and_an_odd_but_hashed_history(workspace, tmp_path):
    from locopack.storage import load_tensors, save_tensors

    out = _copy(workspace, tmp_path)
    adapter = out / "pytorch_lora_weights.safetensors"
    tensors, metadata = load_tensors(adapter)
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_tensors(tensors, adapter, metadata)
    report = audit_folder(out)
    assert any(c.name == "adapter" and "other shapes" in c.detail for c in report.checks)

    # a chain rewritten with recomputed hashes and an odd field: the entry does not read, and
    # the audit names its line and field
    entries = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    entries[0]["edits"] = "not a list"
    body = {k: v for k, v in entries[0].items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    entries[0]["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    for name in ("history.jsonl", "merged/history.jsonl"):
        (out / name).write_text("".join(json.dumps(e) + "\n" for e in entries))
    result = CliRunner().invoke(cli, ["audit", str(out)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert "FAIL  history" in result.output and "history.jsonl:1: field 'edits'" in result.output


def test_a_build_of_another_recipe_replaces_the_old_outputs(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    assert (out / "merged").is_dir()
    recipe = _write_recipe(workspace, str(workspace / "twin"), "replaced")  # no merged export
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(out), "--replace"])
    assert result.exit_code == 0, result.output
    assert "of the release of recipe 'first' (--replace)" in result.output
    assert not (out / "merged").exists()
    assert [e.recipe_name for e in read_history(out / "history.jsonl")] == ["replaced"]
    assert audit_folder(out).ok


def test_reproduce_catches_a_delta_whose_history_was_rewritten_to_match(workspace, tmp_path):
    from locopack.release.history import entry_hash, hashed_files

    out = _copy(workspace, tmp_path)
    delta = WeightDelta.load(out / "delta.safetensors")
    WeightDelta({k: v * 1.5 for k, v in delta.deltas.items()}, delta.provenance).save(
        out / "delta.safetensors"
    )
    entries = read_history(out / "history.jsonl")
    scaled = WeightDelta.load(out / "delta.safetensors")
    update = {"delta_sha256": scaled.sha256(), "files": hashed_files(out)}
    entries[-1] = entries[-1].model_copy(update=update)
    entries[-1].hash = entry_hash(entries[-1])
    for name in ("history.jsonl", "merged/history.jsonl"):
        (out / name).write_text("".join(e.line() for e in entries))
    checks = {c.name: c.ok for c in audit_folder(out, reproduce=Reproduce.QUICK).checks}
    assert checks["history chain"] and checks["files"] and checks["delta"]
    assert checks["reproduce"] is False


def test_a_release_folder_as_base_means_its_merged_checkpoint(workspace, tmp_path):
    recipe = _write_recipe(workspace, str(workspace / "first"), "on-release")
    out = tmp_path / "on-release"
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [e.recipe_name for e in read_history(out / "history.jsonl")] == [
        "first",
        "on-release",
    ]
    report = audit_folder(out, reproduce=Reproduce.QUICK)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_the_card_names_plugin_detectors_the_user_allowed(workspace, tmp_path):
    out = _copy(workspace, tmp_path)
    before, _ = build_card(out)
    assert "Plug-in detectors" not in before
    recipe = (out / "recipe.yaml").read_text()
    (out / "recipe.yaml").write_text(recipe + "evidence:\n  detectors: [clip, my_pkg.det:find]\n")
    text, _ = build_card(out)
    assert "Plug-in detectors, code run with `--allow-code`: `my_pkg.det:find`." in text
