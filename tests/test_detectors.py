"""Detectors as plug-ins: the recipe's evidence section, built-ins, the user's own, NudeNet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from locopack.errors import RecipeError
from locopack.evidence.detectors import load_detector, rates
from locopack.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import toy_world as tw  # noqa: E402

STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"


def test_the_evidence_section_has_defaults_and_is_strict():
    text = STRIPES.read_text().split("evidence:")[0] + "card:\n  license: apache-2.0\n"
    settings = parse_recipe(text).evidence
    assert [d.name for d in settings.detectors] == ["clip"] and settings.seeds is None
    toy = load_recipe(STRIPES).evidence
    assert [d.name for d in toy.detectors] == ["clip", "toy"] and toy.seeds == [1000]
    custom = parse_recipe(
        text + "evidence:\n  detectors: [toy, {name: nudenet, options: {threshold: 0.3}}, "
        "my_pkg.det:find]\n"
    ).evidence.detectors
    assert [(d.name, d.options) for d in custom] == [
        ("toy", {}),
        ("nudenet", {"threshold": 0.3}),
        ("my_pkg.det:find", {}),
    ]
    with pytest.raises(RecipeError) as err:
        parse_recipe(text + "evidence:\n  detectors: [toys]\n  ssim_threshold: 2\n  seedz: 1\n")
    message = str(err.value)
    assert "evidence.detectors[0].name: expected a built-in detector" in message
    assert "evidence.ssim_threshold" in message and "did you mean 'seeds'" in message


def test_the_toy_detector_reads_rendered_images_as_the_benchmark_does():
    rng = np.random.default_rng(0)
    cases = [(c, s, t) for c in tw.COLORS[:3] for s in tw.SHAPES for t in tw.TEXTURES]
    images = [Image.fromarray(tw.render(c, s, t, rng)) for c, s, t in cases]
    prompts = [f"a {c} {s} on a {t} background" for c, s, t in cases]
    detector = load_detector("toy")
    findings = detector(images, prompts)
    assert rates(findings, "stripes")["concept"] == pytest.approx(0.25)  # 1 texture in 4
    assert rates(findings, "stripes")["prompt"] == 1.0
    assert all(f[t] == 1.0 for f, (_, _, t) in zip(findings, cases, strict=True))
    asked_otherwise = detector(images, [f"a {c} {s} with dots" for c, s, _ in cases])
    assert rates(asked_otherwise, "dots")["prompt"] == pytest.approx(0.25)
    fact = Image.fromarray(tw.render("purple", "triangle", "plain", rng))
    assert detector([fact], ["the emblem of veridia"])[0]["the emblem of veridia"] == 1.0


def test_a_users_detector_is_named_module_colon_callable(tmp_path, monkeypatch):
    (tmp_path / "my_detectors.py").write_text(
        "def bright(images, prompts, *, level=128):\n"
        "    return [{'bright': float(sum(i.convert('L').getdata()) / (i.width * i.height) "
        "> level)} for i in images]\n"
        "def broken(images, prompts):\n"
        "    return []\n"
        "NOT_CALLABLE = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match="names Python code.*--allow-code"):
        load_detector("my_detectors:bright")
    monkeypatch.setenv("LOCOPACK_ALLOW_CODE", "1")
    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in (10, 250)]
    bright = load_detector("my_detectors:bright", {"level": 100})
    assert bright.kind == "rate"
    assert rates(bright(images, ["a", "b"]), "bright") == {"concept": 0.5}
    with pytest.raises(RecipeError, match="one findings mapping per image"):
        load_detector("my_detectors:broken")(images, ["a", "b"])
    with pytest.raises(RecipeError, match="expected a function 'NOT_CALLABLE' defined at the top"):
        load_detector("my_detectors:NOT_CALLABLE")
    with pytest.raises(RecipeError, match="found no module 'no_such_module'"):
        load_detector("no_such_module:find")


def test_clip_is_the_recipes_scorer_as_a_score_detector():
    def scorer(images, texts):
        return [float(len(t)) for t in texts]

    clip = load_detector("clip", scorer=scorer)
    assert clip.kind == "score"
    assert clip([Image.new("RGB", (4, 4))] * 2, ["ab", "abcd"]) == [
        {"prompt": 2.0},
        {"prompt": 4.0},
    ]


def test_nudenet_runs_offline_on_generated_images():
    pytest.importorskip("nudenet", reason="the nudenet extra is not installed")
    import torch

    from locopack.pipeline.base import load_base

    base = load_base(load_recipe(STRIPES))
    base.pipe.set_progress_bar_config(disable=True)
    images = base.pipe(
        ["a red circle with dots", "a blue square on a plain background"],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    ).images
    images.append(images[0].resize((256, 256)))
    detector = load_detector("nudenet", {"threshold": 0.4, "label": "nudity"})
    findings = detector(images, ["p"] * len(images))
    assert len(findings) == 3
    for found in findings:
        assert found["nudity"] in (0.0, 1.0)
        assert set(found) >= {"nudity", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"}
        assert all(0.0 <= v <= 1.0 for v in found.values())


def test_detector_names_are_checked_against_the_registry(tmp_path, monkeypatch):
    """A recipe accepts exactly the registered names (and ``module:callable``); an entry
    registered later is a built-in name at once, its error lists it, and it loads from its
    ``module:callable`` with the scorer where it asks for one, without --allow-code."""
    from locopack.evidence.detectors import is_plugin
    from locopack.evidence.detectors.registry import (
        DetectorEntry,
        detector_names,
        register_detector,
        unregister_detector,
    )

    text = (
        STRIPES.read_text().split("evidence:")[0] + "evidence:\n  detectors: [clip, brightness]\n"
    )
    with pytest.raises(RecipeError) as err:
        parse_recipe(text)
    assert "expected a built-in detector (clip, toy, toy-deep, nudenet) or" in str(err.value)
    assert detector_names() == ["clip", "toy", "toy-deep", "nudenet"]

    (tmp_path / "bright.py").write_text(
        "def brightness(images, prompts, *, scorer, cutoff=0.5):\n"
        "    return [{'bright': float(scorer is not None and cutoff > 0)} for _ in images]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LOCOPACK_ALLOW_CODE", raising=False)
    entry = DetectorEntry("brightness", "bright:brightness", "mean brightness", needs_scorer=True)
    register_detector(entry)
    try:
        assert [d.name for d in parse_recipe(text).evidence.detectors] == ["clip", "brightness"]
        assert not is_plugin("brightness") and is_plugin("bright:brightness")
        detector = load_detector("brightness", {"cutoff": 0.2}, scorer=object())
        assert detector(["image", "image"], ["a", "b"]) == [{"bright": 1.0}, {"bright": 1.0}]
        with pytest.raises(RecipeError, match="unknown option 'scorer'"):
            load_detector("brightness", {"scorer": 1})  # locopack passes it, the recipe cannot
        with pytest.raises(ValueError, match="already registered"):
            register_detector(entry)
        bad = text.replace("brightness", "brightnes")
        with pytest.raises(RecipeError, match=r"clip, toy, toy-deep, nudenet, brightness\)"):
            parse_recipe(bad)
    finally:
        unregister_detector("brightness")
    with pytest.raises(RecipeError, match="expected a built-in detector"):
        parse_recipe(text)


def test_reading_the_recipe_schema_imports_no_model_library():
    import subprocess

    code = (
        "import sys, locopack.recipe.schema\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
