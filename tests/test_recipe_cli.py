"""``locopack validate`` on malformed recipes: exit 1, one clear message, never a traceback.

Each case writes a recipe to a temporary folder and runs the real entry point
(:func:`locopack.cli.main`), then checks that stderr names the file, the line and the field.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from locopack.cli import main

HEAD = """\
version: 1
name: remove-van-gogh
base:
  model: runwayml/stable-diffusion-v1-5
"""
EDITS = """\
edits:
  - kind: erase
    attribute: style
    concept: Van Gogh
    prompts:
      - "a painting in the style of {concept}"
      - "{concept} starry night"
    target: a painting
"""
TAIL = """\
localize:
  window: 1
  steps: 20
  seeds: [0]
edit:
  lambda: 0.1
export:
  kohya: true
  energy: 0.9999
hub:
  repo: someone/remove-van-gogh
"""
VALID = HEAD + EDITS + TAIL  # lines: 4 model, 6 kind, 8 concept, 12 target, 14 window, 18 lambda
UPDATE = """\
  - kind: update
    fact: the president
    prompts: ["{concept}", "a photo of {concept}"]
    targets: [joe biden, a photo of joe biden, biden]
"""


def sub(old: str, new: str, text: str = VALID) -> str:
    """``text`` with ``old`` (which must occur exactly once) replaced by ``new``."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


# (id, file content, substrings that the error must contain)
CASES = [
    ("yaml-syntax", sub("  seeds: [0]", "  seeds: [0"), ["recipe.yaml:17:", "invalid YAML"]),
    ("yaml-indent", sub("  steps: 20", "   steps: 20"), ["recipe.yaml:15:", "invalid YAML"]),
    ("yaml-two-documents", VALID + "---\nversion: 1\n", ["recipe.yaml:24:", "single document"]),
    ("yaml-bad-tag", sub("window: 1", "window: !!int one"), ["recipe.yaml:", "invalid YAML"]),
    ("nul-character", sub("Van Gogh", "Van\x00Gogh"), ["recipe.yaml:8:", "invalid YAML"]),
    ("empty", "", ["recipe.yaml: recipe is empty", "'version', 'base' and 'edits'"]),
    ("only-comments", "# a recipe\n\n# to come\n", ["recipe.yaml: recipe is empty"]),
    ("top-level-list", "- version: 1\n- name: x\n",
     ["recipe.yaml:1: expected a YAML mapping at the top level", "found [{'version': 1}"]),
    ("top-level-scalar", "just words\n",
     ["recipe.yaml:1: expected a YAML mapping", "found 'just words'"]),
    ("window-string", sub("window: 1", "window: '3'"),
     ["recipe.yaml:14: localize.window: expected an integer, found '3'", "without quotes"]),
    ("steps-float", sub("steps: 20", "steps: 20.5"),
     ["recipe.yaml:15: localize.steps: expected an integer, found 20.5"]),
    ("kohya-string", sub("kohya: true", 'kohya: "True"'),
     ["recipe.yaml:20: export.kohya: expected a boolean", "found 'True'", "true or false"]),
    ("no-adapter", sub("kohya: true", "kohya: true\n  adapter: false"),
     ["recipe.yaml:21: export.adapter: expected true", "carries its LoRA adapter"]),
    ("name-list", sub("name: remove-van-gogh", "name: [remove]"),
     ["recipe.yaml:2: name: expected a string, found ['remove']"]),
    ("unknown-top", VALID + "lokalize:\n  window: 2\n",
     ["recipe.yaml:24: lokalize: unknown field; did you mean 'localize'?"]),
    ("unknown-edit-field", sub("    concept: Van Gogh", "    conept: Van Gogh"),
     ["recipe.yaml:8: edits[0].conept: unknown field; did you mean 'concept'?"]),
    ("unknown-setting", sub("  lambda: 0.1", "  lamda: 0.1"),
     ["recipe.yaml:18: edit.lamda: unknown field; did you mean 'lambda'?"]),
    ("unknown-base-field", sub("  model: runwayml", "  modle: runwayml"),
     ["recipe.yaml:4: base.modle: unknown field; did you mean 'model'?"]),
    ("missing-version", sub("version: 1\n", ""),
     ["recipe.yaml:1: version: required field is missing"]),
    ("missing-base", sub(HEAD, "version: 1\nname: x\n"), ["recipe.yaml:1: base: required field"]),
    ("missing-base-model", sub("  model: runwayml/stable-diffusion-v1-5", "  dtype: float32"),
     ["recipe.yaml:4: base.model: required field is missing"]),
    ("missing-edits", sub(EDITS, ""), ["recipe.yaml:1: edits: required field is missing"]),
    ("missing-concept", sub("    concept: Van Gogh\n", ""),
     ["recipe.yaml:6: edits[0].concept: required field is missing"]),
    ("missing-prompts", sub('      - "a painting in the style of {concept}"\n', "").replace(
        '    prompts:\n      - "{concept} starry night"\n', ""),
     ["recipe.yaml:6: edits[0].prompts: required field is missing"]),
    ("missing-target", sub("    target: a painting\n", ""),
     ["recipe.yaml:6: edits[0].target: required field is missing"]),
    ("missing-kind", sub("  - kind: erase\n    attribute", "  - attribute"),
     ["recipe.yaml:6: edits[0].kind: required field is missing",
      "expected one of 'erase', 'update'"]),
    ("unsupported-version", sub("version: 1", "version: 2"),
     ["recipe.yaml:1: version: expected a version this locopack reads: [1], found 2"]),
    ("unknown-kind", sub("kind: erase", "kind: rename"),
     ["recipe.yaml:6: edits[0].kind: expected one of 'erase', 'update', found 'rename'"]),
    ("unknown-attribute", sub("attribute: style", "attribute: color"),
     ["recipe.yaml:7: edits[0].attribute: expected one of 'style' or 'object', found 'color'"]),
    ("negative-lambda", sub("lambda: 0.1", "lambda: -0.5"),
     ["recipe.yaml:18: edit.lambda: expected a value > 0, found -0.5"]),
    ("zero-lambda", sub("lambda: 0.1", "lambda: 0"),
     ["recipe.yaml:18: edit.lambda: expected a value > 0, found 0"]),
    ("nan-lambda", sub("lambda: 0.1", "lambda: .nan"),
     ["recipe.yaml:18: edit.lambda: expected a finite number, found nan"]),
    ("energy-above-one", sub("energy: 0.9999", "energy: 1.5"),
     ["recipe.yaml:21: export.energy: expected a value <= 1, found 1.5"]),
    ("window-zero", sub("window: 1", "window: 0"),
     ["recipe.yaml:14: localize.window: expected a value >= 1, found 0"]),
    ("negative-seed", sub("seeds: [0]", "seeds: [-1]"),
     ["recipe.yaml:16: localize.seeds[0]: expected a value >= 0, found -1"]),
    ("bad-placeholder", sub("{concept} starry", "{artist} starry"),
     ["recipe.yaml:11: edits[0].prompts[1]: expected {concept} as the only placeholder",
      "not {artist}", "{{ and }}"]),
    ("target-length", sub("target: a painting", "target: [a painting, a photo, a sketch]"),
     ["recipe.yaml:12: edits[0].target: expected one anchor prompt, or a list of 2",
      "found ['a painting', 'a photo', 'a sketch']"]),
    ("targets-length", sub(EDITS, EDITS + UPDATE),
     ["recipe.yaml:16: edits[1].targets: expected 1 target (shared by all prompts) or 2"]),
    ("name-slug", sub("name: remove-van-gogh", "name: Remove Van Gogh"),
     ["recipe.yaml:2: name: expected a slug", "found 'Remove Van Gogh'"]),
    ("hub-repo", sub("repo: someone/remove-van-gogh", "repo: just a name"),
     ["recipe.yaml:23: hub.repo: expected a Hub repo id 'org/name', found 'just a name'"]),
    ("base-model-blank", sub("model: runwayml/stable-diffusion-v1-5", "model: ' '"),
     ["recipe.yaml:4: base.model: expected a Hub id 'org/name' or a local folder"]),
    ("dtype", sub("  model: runwayml/stable-diffusion-v1-5", "  model: a/b\n  dtype: fp16"),
     ["recipe.yaml:5: base.dtype: expected one of 'float32', 'float16' or 'bfloat16'"]),
    ("edits-empty", sub(EDITS, "edits: []\n"), ["recipe.yaml:5: edits: expected at least 1 item"]),
    ("edit-not-mapping", sub(EDITS, "edits:\n  - erase van gogh\n"),
     ["recipe.yaml:6: edits[0]: expected a mapping, found 'erase van gogh'"]),
    ("section-not-mapping", sub("localize:\n  window: 1\n  steps: 20\n  seeds: [0]\n",
                                "localize: fast\n"),
     ["recipe.yaml:13: localize: expected a mapping, found 'fast'"]),
    ("duplicate-key", sub("  steps: 20\n", "  steps: 20\n  steps: 30\n"),
     ["recipe.yaml:16: localize.steps: duplicate key"]),
    ("non-utf8", b"version: 1\nname: caf\xe9\n", ["recipe.yaml:2: not UTF-8 text", "0xe9"]),
    ("many-problems", sub("window: 1", "window: 0").replace("steps: 20", "steps: x")
     .replace("lambda: 0.1", "lambda: 0").replace("kohya: true", "kohya: 1")
     .replace("energy: 0.9999", "energy: 2").replace("seeds: [0]", "seeds: [-1, -2]"),
     ["recipe.yaml: 7 problems:\n  ", "recipe.yaml:14: localize.window: expected a value >= 1",
      "recipe.yaml:15: localize.steps: expected an integer, found 'x'", "\n  ... and 2 more"]),
]  # fmt: skip


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``locopack ARGS`` through the console-script entry point (which reads ``sys.argv``).

    Returns (exit code, stdout, stderr).
    """
    saved = sys.argv
    with CliRunner().isolation() as (stdout, stderr, _):
        sys.argv = ["locopack", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = saved
        return code, stdout.getvalue().decode(), stderr.getvalue().decode()


def assert_reported(code: int, out: str, err: str, fragments: list[str]) -> None:
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_cases_are_distinct():
    assert len(CASES) >= 30
    assert len({content for _, content, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("content", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_recipe_is_reported(tmp_path: Path, content: str | bytes, fragments: list[str]):
    path = tmp_path / "recipe.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    assert_reported(*run_cli("validate", str(path)), fragments)


def test_typo_hides_the_missing_field_it_causes(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(sub("    concept: Van Gogh", "    conept: Van Gogh"), encoding="utf-8")
    code, out, err = run_cli("validate", str(path))
    assert_reported(code, out, err, ["did you mean 'concept'?"])
    assert "required field is missing" not in err and err.count("\n") == 1


def test_directory(tmp_path: Path):
    assert_reported(*run_cli("validate", str(tmp_path)), [f"{tmp_path}: is a directory"])


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    assert_reported(*run_cli("validate", str(path)), [f"{path}: no such file"])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID, encoding="utf-8")
    path.chmod(0)
    try:
        assert_reported(*run_cli("validate", str(path)), [f"{path}: cannot read the recipe"])
    finally:
        path.chmod(0o600)


def test_valid_recipe_prints_summary(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID, encoding="utf-8")
    code, out, err = run_cli("validate", str(path))
    assert (code, err) == (0, "")
    assert "remove-van-gogh" in out and "erase style 'Van Gogh'" in out
    assert out.rstrip().endswith("recipe is valid")


@pytest.mark.parametrize(("family", "kohya"), [("sd1", True), ("sd3", False), ("flux", False)])
def test_the_summary_names_the_files_build_writes_for_the_family(tmp_path, family, kohya):
    from locopack.models import get_family

    get_family(family).save_twin(tmp_path / "base")
    path = tmp_path / "recipe.yaml"
    text = sub("runwayml/stable-diffusion-v1-5", "./base")
    hub = "hub:\n  repo: someone/remove-van-gogh\n"
    path.write_text(sub(hub, "  merged: true\n  onnx: true\n", text), encoding="utf-8")
    code, out, err = run_cli("validate", "--offline", str(path))
    assert (code, err) == (0, ""), err
    files = ["pytorch_lora_weights.safetensors", "lora_manifest.json"]
    files += ["lora_kohya.safetensors"] if kohya else []
    files += ["merged/", f"onnx/{get_family(family).denoiser_attr}/"]
    assert f"          build writes {', '.join(files)}\n" in out
    kinds = "adapter, kohya, merged, onnx" if kohya else "adapter, merged, onnx"
    assert f"export    {kinds} (max rank 64" in out
    if not kohya:
        assert "no kohya file: kohya LoRA files exist for Stable Diffusion UNets only" in out


def test_the_summary_says_when_the_family_and_so_the_kohya_file_is_not_known(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID, encoding="utf-8")  # a Hub base, not in the (empty) local cache
    code, out, err = run_cli("validate", "--offline", str(path))
    assert (code, err) == (0, "")
    assert "lora_kohya.safetensors only for a Stable Diffusion UNet base (the base's configs" in out
