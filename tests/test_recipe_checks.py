"""Tests of locopack.recipe.checks.preflight: what a recipe names exists and fits, before any run.

The recipes here name the toy model and its CLIP scorer shipped in ``recipes/toy`` (real folders,
read for their configs only).  Each bad kind must fail with the recipe file, line and field.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from locopack.errors import ModelLayoutError, OfflineError, RecipeError
from locopack.recipe import load_recipe, parse_recipe
from locopack.recipe.checks import preflight

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "recipes" / "toy"
#: every Hub repo the example recipes name (base models, scorers, push targets), for review
EXAMPLE_HUB_IDS = (
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
    "black-forest-labs/FLUX.1-schnell",
    "lodestones/Chroma1-HD",
    "openai/clip-vit-large-patch14",
    "stabilityai/stable-diffusion-3.5-medium",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
)
EXAMPLE_HUB_IDS = tuple(
    sorted(EXAMPLE_HUB_IDS + ("Tongyi-MAI/Z-Image-Turbo", "Alpha-VLLM/Lumina-Image-2.0"))
)
EXAMPLE_HUB_IDS = tuple(sorted(EXAMPLE_HUB_IDS + ("black-forest-labs/FLUX.2-dev",)))
EXAMPLE_HUB_IDS = tuple(sorted(EXAMPLE_HUB_IDS + ("Qwen/Qwen-Image",)))

GOOD = f"""\
version: 1
name: toy-check
base:
  model: {TOY / "toy-world"}
edits:
  - kind: erase
    attribute: style
    concept: stripes
    prompts: ["a red circle on a {{concept}} background", "a blue square with {{concept}}"]
    target: [a red circle on a plain background, a blue square with plain]
    preserve: [a red circle on a dots background]
preserve: [a green triangle]
localize:
  window: 2
  scorer: {TOY / "toy-clip"}
edit:
  tokens: concept
"""  # lines: 4 base.model, 9 prompts, 10 target, 11/12 preserve, 14 window, 15 scorer


def check(text: str, source: str = "r.yaml") -> None:
    preflight(parse_recipe(text, source), offline=True)


def sub(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a_good_recipe_passes():
    check(GOOD)


def test_every_shipped_recipe_that_names_existing_models_passes():
    for path in sorted((ROOT / "recipes").glob("*/*.yaml")):
        if path.parent.name != "twin":  # the twin recipe names a folder that `locopack twin` makes
            preflight(load_recipe(path), offline=True)


def test_example_recipes_name_exactly_the_reviewed_hub_ids():
    named = set()
    for path in sorted((ROOT / "recipes" / "examples").glob("*.yaml")):
        recipe = load_recipe(path)
        named |= {recipe.base.model, recipe.localize.scorer} | {recipe.hub.repo} - {None}
    assert sorted(named) == list(EXAMPLE_HUB_IDS)
    assert "runwayml/stable-diffusion-v1-5" not in (ROOT / "README.md").read_text()


RELEASE_NO_MERGED = "release-without-merged"
BAD = [
    ("etc", sub(f"model: {TOY / 'toy-world'}", "model: /etc"),
     "r.yaml:4: base.model: expected a diffusers pipeline folder", "found '/etc' without"),
    ("a-file", sub(f"model: {TOY / 'toy-world'}", "model: /etc/passwd"),
     "r.yaml:4: base.model: expected a diffusers pipeline folder", "'/etc/passwd', a file"),
    ("missing-folder", sub(f"model: {TOY / 'toy-world'}", "model: ./does-not-exist"),
     "r.yaml:4: base.model: expected a local folder or a Hub id", "no such folder"),
    ("absolute-missing", sub(f"model: {TOY / 'toy-world'}", "model: /etc/passwd-nope/x"),
     "r.yaml:4: base.model: expected a local folder or a Hub id", "no such folder"),
    ("url", sub(f"model: {TOY / 'toy-world'}", "model: https://huggingface.co/org/name"),
     "r.yaml:4: base.model: expected a local folder or a Hub id", "found a URL"),
    ("dot-dot", sub(f"model: {TOY / 'toy-world'}", "model: org/../../x"),
     "r.yaml:4: base.model: expected a local folder or a Hub id", "'org/../../x': no such"),
    ("nul", sub(f"model: {TOY / 'toy-world'}", 'model: "org/na\\0me"'),
     "r.yaml:4: base.model: expected a local folder or a Hub id", "NUL character"),
    ("adapter-only-release", sub(f"model: {TOY / 'toy-world'}", f"model: ./{RELEASE_NO_MERGED}"),
     "r.yaml:4: base.model: expected a diffusers pipeline folder", "without a merged checkpoint"),
    ("scorer-missing", sub(f"scorer: {TOY / 'toy-clip'}", "scorer: ./no-scorer"),
     "r.yaml:15: localize.scorer: expected a local folder or a Hub id", "no such folder"),
    ("scorer-not-clip", sub(f"scorer: {TOY / 'toy-clip'}", f"scorer: {TOY / 'toy-world'}"),
     "r.yaml:15: localize.scorer: expected a CLIP model folder", "without a readable config"),
    ("window-too-wide", sub("window: 2", "window: 8"),
     "r.yaml:14: localize.window: the model has 7 text-conditioning sites", "found 8"),
    ("layer-index", sub("window: 2", "window: 1\n  layers: [9]"),
     "r.yaml:15: localize.layers[0]: expected a site index below 7", "found 9"),
    ("layer-twice", sub("window: 2", "window: 1\n  layers: [1, 0, 0]"),
     "r.yaml:15: localize.layers[2]: expected each site once, found 0, the site "
     "'down_blocks.0.attentions.0.transformer_blocks.0.attn2' that localize.layers[1] names",
     "remove one"),
    ("layer-path-and-index", sub("window: 2", "window: 1\n  layers:\n"
                                 "    - down_blocks.0.attentions.0.transformer_blocks.0.attn2\n"
                                 "    - 0"),
     "r.yaml:17: localize.layers[1]: expected each site once, found 0, the site", "[0] names"),
    ("concept-missing", sub("a blue square with {concept}", "a blue square with dots"),
     "r.yaml:9: edits[0].prompts[1]: expected a prompt that contains 'stripes'", "{concept}"),
    ("target-equals-prompt", sub("a blue square with plain", "a blue square with stripes"),
     "r.yaml:10: edits[0].target[1]: expected a target that differs", "nothing to edit"),
    ("anchor-names-concept", sub("a blue square with plain", "a blue square of stripes"),
     "r.yaml:10: edits[0].target[1]: expected an anchor without the concept 'stripes'", ""),
    ("edited-and-preserved", sub("[a green triangle]", "[a blue square with stripes]"),
     "r.yaml:12: preserve[0]: expected prompts that no edit changes", "edits[0] edits it"),
    ("edited-and-preserved-in-edit", sub("[a red circle on a dots background]",
                                         "[a red circle on a stripes background]"),
     "r.yaml:11: edits[0].preserve[0]: expected prompts that no edit changes", ""),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where", "what"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_each_bad_kind_names_file_line_and_field(tmp_path, monkeypatch, text, where, what):
    release = tmp_path / RELEASE_NO_MERGED
    release.mkdir()
    (release / "pytorch_lora_weights.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        check(text)
    message = str(info.value)
    assert message.startswith(where) and what in message, message
    assert "\n" not in message  # one problem, one line


def test_every_problem_is_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = sub(f"scorer: {TOY / 'toy-clip'}", "scorer: ./gone", sub("window: 2", "window: 9"))
    text = sub("a blue square with {concept}", "a blue square", text)
    with pytest.raises(RecipeError) as info:
        check(text)
    lines = str(info.value).splitlines()
    assert lines[0] == "r.yaml: 3 problems:"
    assert [line.split(": ")[1] for line in lines[1:]] == [
        "localize.scorer",
        "localize.window",
        "edits[0].prompts[1]",
    ]


def test_a_release_with_a_merged_checkpoint_is_a_base(tmp_path):
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "merged").symlink_to(TOY / "toy-world")
    check(sub(f"model: {TOY / 'toy-world'}", f"model: {tmp_path / 'release'}"))


def test_paths_resolve_beside_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD.replace(str(TOY), "."), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"r\.yaml:4: base\.model: .*no such folder"):
        preflight(load_recipe(recipe), offline=True)
    for name in ("toy-world", "toy-clip"):
        (tmp_path / name).symlink_to(TOY / name)
    preflight(load_recipe(recipe), offline=True)


def test_no_model_is_loaded_or_run(monkeypatch):
    """The checks read configs only: loading a pipeline, a scorer or sweeping would fail here."""
    import diffusers
    import transformers

    import locopack.localize as localize
    import locopack.models as models
    import locopack.models.loading as loading

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded or run")

    for owner, name in [
        (loading, "load_pipeline"),
        (models, "load_pipeline"),
        (localize, "run_sweep"),
        (localize.ClipScorer, "__init__"),
        (diffusers.DiffusionPipeline, "from_pretrained"),
        (diffusers.ModelMixin, "from_pretrained"),
        (transformers.CLIPModel, "from_pretrained"),
    ]:
        monkeypatch.setattr(owner, name, forbidden)
    check(GOOD)
    with pytest.raises(RecipeError, match=r"^r\.yaml:14: localize\.window: the model has 7"):
        check(sub("window: 2", "window: 8"))


# --- the Hub: looked up once when online, never when offline ---------------------------------

HUB = sub(f"model: {TOY / 'toy-world'}", "model: org/model")


class _Calls:
    def __init__(self, result=None, error=None):
        self.repos, self.result, self.error = [], result, error

    def __call__(self, repo, **kwargs):
        self.repos.append((repo, kwargs.get("revision")))
        if self.error is not None:
            raise self.error
        return self.result


def _online(monkeypatch, calls: _Calls) -> None:
    from huggingface_hub import HfApi, constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", calls)


def _hub_error(kind: str):
    import httpx2  # the HTTP client of huggingface_hub
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://hub.invalid/api"))
    return getattr(errors, kind)("not here", response=response)


def test_offline_skips_the_hub(monkeypatch):
    calls = _Calls(error=AssertionError("the Hub was asked"))
    _online(monkeypatch, calls)
    preflight(parse_recipe(HUB, "r.yaml"), offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # detected without being told
    preflight(parse_recipe(HUB, "r.yaml"))
    assert calls.repos == []


def test_an_unknown_hub_repo_is_named_after_one_lookup(monkeypatch):
    calls = _Calls(error=_hub_error("RepositoryNotFoundError"))
    _online(monkeypatch, calls)
    with pytest.raises(RecipeError) as info:
        preflight(parse_recipe(sub("model: org/model", "model: org/model\n  revision: v1", HUB)))
    assert str(info.value).startswith("<string>:4: base.model: expected a model on the Hub")
    assert calls.repos == [("org/model", "v1")]


def test_an_unreachable_hub_is_reported_at_once(monkeypatch):
    calls = _Calls(error=OSError("connection refused"))
    _online(monkeypatch, calls)
    with pytest.raises(RecipeError, match=r"^r\.yaml:4: base\.model: cannot reach the Hub"):
        preflight(parse_recipe(HUB, "r.yaml"))
    assert len(calls.repos) == 1


def test_a_hub_release_is_accepted_and_a_repo_without_a_pipeline_is_not(monkeypatch):
    from types import SimpleNamespace

    def info(*names):
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n) for n in names])

    _online(monkeypatch, _Calls(result=info("README.md", "merged/model_index.json")))
    preflight(parse_recipe(HUB, "r.yaml"))
    _online(monkeypatch, _Calls(result=info("README.md", "weights.ckpt")))
    with pytest.raises(RecipeError, match=r"^r\.yaml:4: base\.model: expected a repo with"):
        preflight(parse_recipe(HUB, "r.yaml"))


def test_offline_model_layout_fails_at_once(monkeypatch):
    from locopack.models import model_layout

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match=r"^org/model: the Hub is switched off"):
        model_layout("org/model")
    assert time.perf_counter() - start < 5


def test_a_damaged_weights_file_is_named(tmp_path):
    from locopack.models import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(TOY / "toy-world", model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not a header"
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLayoutError) as info:
        load_pipeline(str(model))
    assert str(info.value).startswith(f"{weights}: the weights file is damaged")
    assert "pickle" not in str(info.value)


def test_preflight_needs_the_source_text_only_for_lines():
    recipe = parse_recipe(GOOD, "r.yaml")
    bare = type(recipe).model_validate(yaml.safe_load(sub("window: 2", "window: 8")))
    with pytest.raises(RecipeError, match=r"^<recipe>: localize\.window: the model has 7"):
        preflight(bare, offline=True)
