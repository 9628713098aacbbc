"""Tests of locopack.recipe: schema, defaults, provenance, templates, model checks, robustness."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locopack.errors import RecipeError
from locopack.recipe import (
    EraseEdit,
    Recipe,
    UpdateEdit,
    check_against_model,
    load_recipe,
    parse_recipe,
    resolve_layers,
    summarize,
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SITES = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
]

FULL = """\
version: 1
name: remove-van-gogh
description: no more swirls
base:
  model: runwayml/stable-diffusion-v1-5
  revision: main
  dtype: bfloat16
  variant: fp16
edits:
  - kind: erase
    attribute: style
    concept: Van Gogh
    prompts: ["a painting in the style of {concept}", "{concept} starry night {{sic}}"]
    target: a painting
    preserve: [a painting by Monet]
    held_out: ["sunflowers by {concept}"]
  - kind: update
    fact: president of the united states
    prompts: ["the {concept}", "a photo of the {concept}"]
    targets: [joe biden]
preserve: [a photo of a dog]
localize:
  window: 2
  prompts_per_edit: 3
  steps: 10
  guidance: 1
  seeds: [0, 7]
  scorer: ./scorers/clip
  mode: full
  resolution: 256
  layers: null
edit:
  lambda: 0.5
  matrices: value
  tokens: concept
  preserve_weight: 0
export:
  adapter: true
  max_rank: 8
  energy: 1
  kohya: false
  merged: true
  onnx: false
card:
  description: "# Edited"
  license: apache-2.0
hub:
  repo: someone/remove-van-gogh
  private: false
  branch: edits
"""

MINIMAL = """\
version: 1
name: minimal
base: {model: org/model}
edits:
  - {kind: erase, attribute: object, concept: Snoopy, prompts: ["{concept}"], target: a dog}
"""


def test_full_recipe_reads_every_field():
    recipe = parse_recipe(FULL, "full.yaml")
    erase, update = recipe.edits
    assert isinstance(erase, EraseEdit) and isinstance(update, UpdateEdit)
    assert (recipe.base.dtype, recipe.base.revision, recipe.base.variant) == (
        "bfloat16",
        "main",
        "fp16",
    )
    assert (recipe.localize.window, recipe.localize.seeds, recipe.localize.mode) == (
        2,
        [0, 7],
        "full",
    )
    assert recipe.localize.guidance == 1.0 and isinstance(recipe.localize.guidance, float)
    assert (recipe.edit.lam, recipe.edit.matrices, recipe.edit.tokens) == (0.5, "value", "concept")
    assert (recipe.export.max_rank, recipe.export.energy, recipe.export.merged) == (8, 1.0, True)
    assert (recipe.card.license, recipe.hub.repo, recipe.hub.private) == (
        "apache-2.0",
        "someone/remove-van-gogh",
        False,
    )
    assert (erase.kind, erase.label, update.kind, update.label) == (
        "erase",
        "Van Gogh",
        "update",
        "president of the united states",
    )


def test_full_recipe_round_trips_through_yaml():
    recipe = parse_recipe(FULL)
    dumped = recipe.model_dump(by_alias=True)
    assert dumped["edit"]["lambda"] == 0.5 and "lam" not in dumped["edit"]
    again = parse_recipe(yaml.safe_dump(dumped, sort_keys=False))
    assert again.model_dump() == recipe.model_dump()
    assert again.sha256 != recipe.sha256  # equal content, different source text
    assert Recipe.model_validate(dumped).model_dump() == recipe.model_dump()


def test_defaults():
    recipe = parse_recipe(MINIMAL)
    loc, ed, ex = recipe.localize, recipe.edit, recipe.export
    assert recipe.base.dtype == "float32" and recipe.base.revision is None
    assert recipe.description is None and recipe.preserve == []
    assert (loc.window, loc.prompts_per_edit, loc.steps, loc.guidance) == (1, 4, 20, 7.5)
    assert (loc.seeds, loc.mode, loc.resolution, loc.layers) == ([0], "fast", None, None)
    assert loc.scorer == "openai/clip-vit-large-patch14"
    assert (ed.lam, ed.matrices, ed.tokens, ed.preserve_weight) == (0.1, "both", "cover", 1.0)
    assert (ex.adapter, ex.max_rank, ex.energy, ex.kohya, ex.merged, ex.onnx) == (
        True,
        64,
        0.99999999,
        True,
        False,
        False,
    )
    assert (recipe.card.description, recipe.card.license) == (None, "inherit")
    assert (recipe.hub.repo, recipe.hub.private, recipe.hub.branch) == (None, True, "main")
    assert recipe.edits[0].preserve == [] and recipe.edits[0].held_out == []


def test_load_keeps_source_text_path_and_hash(tmp_path):
    path = tmp_path / "r.yaml"
    data = ("# Zürich comment\n" + FULL).encode("utf-8")
    path.write_bytes(data)
    recipe = load_recipe(path)
    assert recipe.sha256 == hashlib.sha256(data).hexdigest()
    assert recipe.source_text == data.decode("utf-8")
    assert recipe.source == str(path)
    assert "source_text" not in recipe.model_dump() and "sha256" not in recipe.model_dump()


def test_parse_hashes_utf8_of_text():
    recipe = parse_recipe(MINIMAL, "mem.yaml")
    assert recipe.sha256 == hashlib.sha256(MINIMAL.encode("utf-8")).hexdigest()
    assert (recipe.source_text, recipe.source) == (MINIMAL, "mem.yaml")


def test_templates_expand_concept_and_keep_literal_braces():
    erase, update = parse_recipe(FULL).edits
    assert erase.originals() == [
        "a painting in the style of Van Gogh",
        "Van Gogh starry night {sic}",
    ]
    assert erase.expanded_prompts() == erase.originals()
    assert erase.expanded_held_out() == ["sunflowers by Van Gogh"]
    assert update.originals()[1] == "a photo of the president of the united states"
    assert erase.prompts[0] == "a painting in the style of {concept}"  # stored unexpanded


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [("{artist} at work", "not {artist}"), ("{0}", "not {0}"), ("{concept!r}", "not {concept}")],
)
def test_other_placeholders_are_errors(prompt, fragment):
    text = MINIMAL.replace('["{concept}"]', "[ok, " + repr(prompt).replace("'", '"') + "]")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "t.yaml")
    assert "t.yaml:5: edits[0].prompts[1]: expected {concept} as the only placeholder" in str(
        info.value
    )
    assert fragment in str(info.value)


def test_unbalanced_brace_is_an_error():
    with pytest.raises(RecipeError, match=r"edits\[0\]\.prompts\[0\]: expected balanced braces"):
        parse_recipe(MINIMAL.replace('["{concept}"]', '["{concept} }"]'))


def test_targets_broadcast_and_per_prompt():
    erase, update = parse_recipe(FULL).edits
    assert erase.targets_expanded() == ["a painting", "a painting"]
    assert update.targets_expanded() == ["joe biden", "joe biden"]
    per_prompt = FULL.replace("targets: [joe biden]", "targets: [joe biden, a photo of biden]")
    per_prompt = per_prompt.replace("target: a painting", "target: [a painting, a night sky]")
    erase, update = parse_recipe(per_prompt).edits
    assert erase.targets_expanded() == ["a painting", "a night sky"]
    assert update.targets_expanded() == ["joe biden", "a photo of biden"]


def test_single_seed_becomes_a_list():
    recipe = parse_recipe(MINIMAL + "localize: {seeds: 3}\n")
    assert recipe.localize.seeds == [3]


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("evidence: {seeds: [%d]}", "evidence.seeds[0]"),
        ("localize: {seeds: %d}", "localize.seeds[0]"),
        ("edit: {seeds: [0, %d]}", "edit.seeds[1]"),
        ("evidence: {attack: {seed: %d}}", "evidence.attack.seed"),
        ("edit: {neighbours: {count: 2, source: toy, seed: %d}}", "edit.neighbours.seed"),
    ],
)
def test_seeds_are_bounded_to_64_bit_signed_integers(section, field):
    # 2**64 passed the schema and failed at the first image (torch: "Overflow when unpacking")
    assert parse_recipe(MINIMAL + section % (2**63 - 1) + "\n")
    for seed in (2**63, 2**64):
        with pytest.raises(RecipeError) as info:
            parse_recipe(MINIMAL + section % seed + "\n", "s.yaml")
        assert str(info.value) == f"s.yaml:6: {field}: expected a value < {2**63}, found {seed}"


def test_lambda_is_the_yaml_key_and_lam_is_unknown():
    with pytest.raises(RecipeError) as info:
        parse_recipe(MINIMAL + "edit:\n  lam: 0.2\n", "l.yaml")
    assert str(info.value) == "l.yaml:7: edit.lam: unknown field; did you mean 'lambda'?"


def test_typo_suppresses_the_missing_field_it_explains():
    text = MINIMAL.replace("concept: Snoopy", "conept: Snoopy")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "t.yaml")
    assert str(info.value) == "t.yaml:5: edits[0].conept: unknown field; did you mean 'concept'?"


def test_unknown_field_without_close_match_lists_known_fields():
    with pytest.raises(RecipeError) as info:
        parse_recipe(MINIMAL + "hub: {zzz: 1}\n", "h.yaml")
    assert "h.yaml:6: hub.zzz: unknown field; known fields: repo, private, branch" == str(
        info.value
    )


def test_several_problems_are_listed_one_per_line_and_capped():
    text = MINIMAL + (
        "localize: {window: 0, steps: 0, guidance: -1, seeds: [-1], mode: x, resolution: 7}\n"
    )
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "m.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "m.yaml: 6 problems:"
    assert lines[1] == "  m.yaml:6: localize.window: expected a value >= 1, found 0"
    assert len(lines) == 7 and lines[-1] == "  ... and 1 more"
    assert all(line.startswith("  m.yaml:6: localize.") for line in lines[1:6])


def test_duplicate_keys_are_errors():
    with pytest.raises(RecipeError) as info:
        parse_recipe(MINIMAL + "version: 1\n", "d.yaml")
    assert str(info.value).startswith("d.yaml:6: version: duplicate key")


def test_yaml_merge_keys_are_not_duplicates():
    text = MINIMAL + "localize: &l {window: 1}\nedit: {lambda: 0.2}\ncard: {license: mit}\n"
    assert parse_recipe(text).localize.window == 1


def _with_layers(layers: str, window: int = 1) -> Recipe:
    return parse_recipe(MINIMAL + f"localize:\n  window: {window}\n  layers: {layers}\n", "w.yaml")


def test_check_against_model_accepts_paths_and_indices():
    recipe = _with_layers(f"[2, {SITES[0]}]", window=3)
    check_against_model(recipe, len(SITES), SITES)
    assert resolve_layers(recipe, SITES) == [SITES[2], SITES[0]]
    with pytest.raises(RecipeError, match=r"localize\.layers\[1\]: expected each site once"):
        resolve_layers(_with_layers(f"[0, {SITES[0]}]"), SITES)  # one site, by index and path
    assert resolve_layers(parse_recipe(MINIMAL), SITES) is None


def test_check_against_model_rejects_a_window_wider_than_the_model():
    recipe = _with_layers("null", window=4)
    with pytest.raises(RecipeError) as info:
        check_against_model(recipe, 3, SITES)
    message = str(info.value)
    assert message.startswith("w.yaml:7: localize.window: the model has 3 text-conditioning sites")
    assert message.endswith("expected at most 3, found 4")


def test_check_against_model_names_each_bad_layer():
    bad_path = SITES[0].replace("attn2", "attn1")
    recipe = _with_layers(f"[0, 3, {bad_path}]")
    with pytest.raises(RecipeError) as info:
        check_against_model(recipe, 3, SITES)
    lines = str(info.value).splitlines()
    assert lines[0] == "w.yaml: 2 problems:"
    assert lines[1] == "  w.yaml:8: localize.layers[1]: expected a site index below 3, found 3"
    assert lines[2].startswith("  w.yaml:8: localize.layers[2]: expected a site module path")
    assert f"did you mean {SITES[0]!r}?" in lines[2]
    with pytest.raises(RecipeError, match=r"localize\.layers\[1\]"):
        resolve_layers(recipe, SITES)


def test_check_against_model_without_source_text():
    recipe = Recipe.model_validate(yaml.safe_load(MINIMAL) | {"localize": {"window": 5}})
    with pytest.raises(RecipeError, match=r"^<recipe>: localize\.window: the model has 2 "):
        check_against_model(recipe, 2, SITES[:2])


def test_summarize_mentions_the_essentials():
    text = summarize(parse_recipe(FULL))
    for fragment in [
        "remove-van-gogh",
        "runwayml/stable-diffusion-v1-5 @ main (bfloat16, variant fp16)",
        "erase style 'Van Gogh'",
        "update fact 'president of the united states'",
        "2 prompt(s), e.g. 'a painting in the style of Van Gogh'",
        "-> 'joe biden'",
        "preserve 1, held-out 1",
        "window 2",
        "lambda 0.5",
        "adapter, merged",
        "someone/remove-van-gogh (public, branch edits)",
        hashlib.sha256(FULL.encode()).hexdigest()[:12],
    ]:
        assert fragment in text
    assert "layers    0, " in summarize(_with_layers(f"[0, {SITES[1]}]"))


def test_every_shipped_recipe_validates():
    paths = sorted(RECIPES.glob("**/*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.edits and recipe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert summarize(recipe).startswith(f"recipe    {recipe.name} ")


# --- robustness: whatever the content, only RecipeError escapes, naming the source ------------

KEYS = ["version", "name", "base", "model", "edits", "kind", "erase", "update", "concept",
        "prompts", "target", "targets", "localize", "window", "seeds", "layers", "edit", "lambda",
        "export", "energy", "hub", "repo", "<<"]  # fmt: skip
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
nested = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(), inner, max_size=5
        )
    ),
    max_leaves=25,
)
ROBUST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_recipe_errors(text: str) -> None:
    try:
        parse_recipe(text, "fuzz.yaml")
    except RecipeError as exc:
        assert "fuzz.yaml" in str(exc)


@ROBUST
@given(nested)
def test_random_structures_raise_only_recipe_errors(value):
    _only_recipe_errors(yaml.safe_dump(value))


@ROBUST
@given(st.text(max_size=200))
def test_random_text_raises_only_recipe_errors(text):
    _only_recipe_errors(text)


@ROBUST
@given(st.data())
def test_mutated_valid_recipes_raise_only_recipe_errors(data):
    """Replace one random part of a valid recipe, so validation reaches deep fields."""
    document = yaml.safe_load(FULL)
    node = document
    while isinstance(node, dict | list) and node:
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        if data.draw(st.booleans()) or not isinstance(node[key], dict | list):
            node[key] = data.draw(nested)
            break
        node = node[key]
    _only_recipe_errors(yaml.safe_dump(document, sort_keys=False))


# the structure of the published UNet configs the example recipes name (built on the meta device)
REAL_UNETS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": (
        "sd1",
        16,
        dict(
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
    ),
    "stabilityai/stable-diffusion-xl-base-1.0": (
        "sdxl",
        70,
        dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
    ),
}


def _real_sites(model: str) -> list[str]:
    """The site paths of a published model the example recipes name, built on the meta
    device from its configs (UNets above; transformers from tests/test_models_dit.py)."""
    import diffusers
    import torch

    from locopack.models import family_for, get_family
    from tests.test_models_dit import REAL_LAYOUTS

    if model in REAL_UNETS:
        family, expected, config = REAL_UNETS[model]
        with torch.device("meta"):
            sites = get_family(family).sites(diffusers.UNet2DConditionModel(**config))
        assert len(sites) == expected
        return [s.path for s in sites]
    pipeline_class, config = REAL_LAYOUTS[model]
    family = family_for(pipeline_class, config)
    transformer_class = getattr(diffusers, config["_class_name"])
    with torch.device("meta"):
        transformer = transformer_class(**{k: v for k, v in config.items() if k[0] != "_"})
    return [s.path for s in family.sites(transformer)]


def test_example_recipes_fit_the_real_models_they_name():
    import re

    named = set()
    for path in sorted((RECIPES / "examples").glob("*.yaml")):
        recipe = load_recipe(path)
        sites = _real_sites(recipe.base.model)
        named.add(recipe.base.model)
        check_against_model(recipe, len(sites), sites)  # the window fits
        for suggested in re.findall(r"# layers: \[(.+?)\]", recipe.source_text):
            for layer in suggested.split(", "):
                assert layer in sites, (path.name, layer)
    # SD-1.5, SD-XL, SD3.5 Medium, FLUX.1-schnell, SANA 1.6B, Chroma1-HD
    assert len(named) == 6
