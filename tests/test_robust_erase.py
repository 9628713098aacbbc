"""Robust erase (``edit.robust``): found prompts become edit rows, the loop, its checks."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import torch

from locopack.delta import WeightDelta
from locopack.edit import EditSystem, collect_states, compute_delta, edit_errors, extra_rows
from locopack.edit.tokens import edit_prompts, found_pairs
from locopack.errors import RecipeError
from locopack.evidence.attacks.found import Found
from locopack.localize.cache import CandidateCache
from locopack.models import LoadedBase
from locopack.pipeline import robust_attacks
from locopack.pipeline import robust_erase as robust
from locopack.recipe import RobustSettings, load_recipe, parse_recipe
from locopack.release.robust_card import robust_rounds
from locopack.state_rows import StateRows

ROOT = Path(__file__).resolve().parents[1]
STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"
#: LocoGen's window for the stripes erase (sites 0-3 of 7)
WINDOW = [0, 1, 2, 3]
#: the word search's find on the plain stripes edit (scripts/bench_attack.py: 88% stripes)
FOUND = ("a red circle on a an re ackground background",)

RECIPE = """
version: 1
name: erase-van-gogh
base: {model: ./x}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {concept}", "a house by {concept}"]
    target: ["a painting of a cat", "a house"]
    preserve: ["a photo of a dog"]
edit: {tokens: cover}
"""


def _sites(pipe, family):
    return [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]


def test_a_found_prompt_pairs_the_tokens_that_differ_from_its_target_and_the_last(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    [part] = family.text_parts(pipe)
    found, target = "a photo of qux zap dog", "a photo of a dog"
    ids, target_ids = part.token_ids(found), part.token_ids(target)
    pairs = found_pairs(family, pipe, found, target, "cover")
    words = [part.tokenizer.decode([ids[i]]).strip() for i, _ in pairs]
    assert "".join(words[:-1]) == "quxzap" and words[-1] == "dog"
    assert [target_ids[j] for _, j in pairs][-1] == target_ids[-2]  # dog -> dog
    assert part.tokenizer.decode([target_ids[pairs[0][1]]]).strip() == "a"  # qux zap -> a
    every = found_pairs(family, pipe, found, target, "all")  # every token, aligned
    assert [i for i, _ in every] == list(range(len(ids))) and set(pairs) < set(every)


def test_extra_rows_are_more_columns_of_the_same_solve(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    recipe = parse_recipe(RECIPE, "r.yaml")
    extra = [("a painting of a cat in the style of qux zap", "a painting of a cat")]
    layers = _sites(pipe, family)[:2]
    delta = compute_delta(LoadedBase(pipe, family), recipe, layers, extra=extra)
    assert extra_rows(delta.provenance) == extra
    # the columns written out: the recipe's, then the differing tokens and the last one
    states = collect_states(pipe, family, recipe)
    x, y, p = states.columns()
    [part] = family.text_parts(pipe)
    a, b = (part.token_ids(t) for t in extra[0])
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    [(tag, i1, i2, j1, _)] = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    assert tag == "delete" and i2 == len(a) - 1  # "in the style of qux zap" is dropped
    picks = list(range(i1, i2))  # the last token before end-of-text is among them
    found_states = family.encode(pipe, [extra[0][0]])[0].to(torch.float64)
    target_states = family.encode(pipe, [extra[0][1]])[0].to(torch.float64)
    x = torch.cat([x, found_states[picks].T], dim=1)
    # a deleted span maps to the target token before it ("cat")
    y = torch.cat([y, target_states[[j1 - 1] * len(picks)].T], dim=1)
    system = EditSystem.build(x, y, recipe.edit.lam, p, recipe.edit.preserve_weight)
    unet = pipe.unet
    for module, d in delta.deltas.items():
        expected = system.delta(unet.get_submodule(module).weight).to(torch.float32)
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-7)
    assert delta.provenance.columns == x.shape[1]
    # on the columns with the extra rows, the edit that solved for them errs less than the plain
    plain = compute_delta(LoadedBase(pipe, family), recipe, layers)
    report = edit_errors(LoadedBase(pipe, family), recipe, delta)
    plain_on_rows = edit_errors(
        LoadedBase(pipe, family), recipe, WeightDelta(plain.deltas, delta.provenance)
    )
    for module in delta.deltas:
        assert report[module]["edit_error"] < plain_on_rows[module]["edit_error"]


def test_a_delta_records_its_extra_rows_and_keeps_them_through_a_file(tmp_path, twin_pipes):
    pipe, family = twin_pipes["sd1"]
    recipe = parse_recipe(RECIPE, "r.yaml")
    extra = [("a house by qux", "a house")]
    delta = compute_delta(LoadedBase(pipe, family), recipe, _sites(pipe, family)[:1], extra=extra)
    delta.save(tmp_path / "d.safetensors")
    again = WeightDelta.load(tmp_path / "d.safetensors")
    assert extra_rows(again.provenance) == extra
    assert (
        extra_rows(
            compute_delta(LoadedBase(pipe, family), recipe, _sites(pipe, family)[:1]).provenance
        )
        == []
    )
    prompts = edit_prompts(pipe, family, recipe, extra)
    assert prompts.originals[-1] == "a house by qux" and len(prompts.rows) == 2


def _state_rows(pipe, family, found: str, target: str) -> StateRows:
    """Rows of ``found``'s states, moved off the text's, mapped to ``target``'s states."""
    states = family.encode(pipe, [found]).float()
    moved = states + 0.5 * torch.randn(states.shape, generator=torch.Generator().manual_seed(0))
    pairs = found_pairs(family, pipe, found, target, "cover")
    return StateRows(
        moved, family.encode(pipe, [target]).float(), tuple((0, i, j) for i, j in pairs)
    )


def test_state_rows_are_more_columns_of_the_same_solve_and_travel_in_the_delta_file(
    tmp_path, twin_pipes
):
    pipe, family = twin_pipes["sd1"]
    recipe = parse_recipe(RECIPE, "r.yaml")
    rows = _state_rows(pipe, family, "a house by qux", "a house")
    base, layers = LoadedBase(pipe, family), _sites(pipe, family)[:2]
    delta = compute_delta(base, recipe, layers, rows=rows)
    # independently: the recipe's columns, then the rows' states at their pairs
    x, y, p = collect_states(pipe, family, recipe).columns()
    x = torch.cat([x, torch.stack([rows.originals[k, i] for k, i, _ in rows.pairs], 1)], 1)
    y = torch.cat([y, torch.stack([rows.targets[k, j] for k, _, j in rows.pairs], 1)], 1)
    system = EditSystem.build(
        x.double(), y.double(), recipe.edit.lam, p, recipe.edit.preserve_weight
    )
    for module, d in delta.deltas.items():
        expected = system.delta(pipe.unet.get_submodule(module).weight).to(torch.float32)
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-7)
    assert delta.provenance.columns == x.shape[1]
    plain = compute_delta(base, recipe, layers)
    assert delta.sha256() != plain.sha256()
    # the file keeps the rows beside the weights; the hash is the weights' alone
    delta.save(tmp_path / "d.safetensors")
    again = WeightDelta.load(tmp_path / "d.safetensors")
    assert again.deltas.keys() == delta.deltas.keys() and again.sha256() == delta.sha256()
    assert again.rows.pairs == rows.pairs and torch.equal(again.rows.originals, rows.originals)
    assert WeightDelta.load(_saved(plain, tmp_path / "p.safetensors")).rows is None
    # the edit errors count them: the robust delta errs less on them than the plain one
    errors = edit_errors(base, recipe, again)
    plain_on_rows = edit_errors(base, recipe, WeightDelta(plain.deltas, delta.provenance, rows))
    for module in delta.deltas:
        assert errors[module]["edit_error"] < plain_on_rows[module]["edit_error"]


def _saved(delta: WeightDelta, path: Path) -> Path:
    delta.save(path)
    return path


def test_state_rows_that_do_not_fit_are_refused_in_one_line(tmp_path, twin_pipes):
    from safetensors.torch import load_file, save_file

    from locopack.errors import EditError
    from locopack.state_rows import PREFIX

    states = torch.zeros(1, 4, 3)
    with pytest.raises(EditError, match=r"pair \(0, 4, 0\) lies outside the 1 x 4 states"):
        StateRows(states, states, ((0, 4, 0),))
    with pytest.raises(EditError, match="one \\(n, L, D\\) shape"):
        StateRows(states, torch.zeros(1, 5, 3), ())
    pipe, family = twin_pipes["sd1"]
    delta = compute_delta(
        LoadedBase(pipe, family), parse_recipe(RECIPE, "r.yaml"), _sites(pipe, family)[:1],
        rows=_state_rows(pipe, family, "a house by qux", "a house"),
    )  # fmt: skip
    path = _saved(delta, tmp_path / "d.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    del tensors[PREFIX + "targets"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(EditError, match="d.safetensors: its state rows are incomplete"):
        WeightDelta.load(path)
    # sites that read a stream of their own cannot take states
    from locopack.models import get_family

    family = get_family("sd3")
    pipe = family.build_twin(seed=0)
    recipe = parse_recipe(RECIPE, "r.yaml")
    with pytest.raises(EditError, match="continuous rows \\(states\\) need sites that read one"):
        compute_delta(
            LoadedBase(pipe, family),
            recipe,
            _sites(pipe, family)[:1],
            rows=StateRows(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), ()),
        )


def test_a_found_prompt_maps_to_the_target_of_the_nearest_edit_prompt():
    edit = parse_recipe(RECIPE, "r.yaml").edits[0]
    assert robust.nearest_target(edit, "a house by qux zap") == "a house"
    assert robust.nearest_target(edit, "a painting of a cat in the style of qux") == (
        "a painting of a cat"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attacks": ["nosuch"]}, "edit.robust: attacks: 'nosuch' is not an attack"),
        ({"detectors": ["clip"]}, "edit.robust: expected a rate detector"),
        ({"steps": 0}, "edit.robust: the search attack runs at evidence.attack's budget"),
    ],
)
def test_a_robust_erase_it_could_not_run_is_refused_in_one_line(change, message):
    from locopack.recipe import AttackSettings, DetectorSpec

    recipe = load_recipe(STRIPES)
    recipe.edit.robust = RobustSettings(attacks=change.get("attacks", ["search"]))
    if "detectors" in change:
        recipe.evidence.detectors = [DetectorSpec(name="clip")]
    if "steps" in change:
        recipe.evidence.attack = AttackSettings(steps=0)
    with pytest.raises(RecipeError) as error:
        robust.check_robust(recipe)
    assert message in str(error.value) and "\n" not in str(error.value)
    robust.check_robust(load_recipe(STRIPES))  # off: nothing to check


def test_validate_refuses_an_attack_nobody_registered_in_one_line(tmp_path):
    from click.testing import CliRunner

    from locopack.cli import cli

    text = STRIPES.read_text().replace("  tokens: all\n", "  tokens: all\n  robust: {}\n")
    recipe = tmp_path / "robust.yaml"
    for model in ("toy-world", "toy-clip"):
        (tmp_path / model).symlink_to(STRIPES.parent / model)
    recipe.write_text(text)
    assert CliRunner().invoke(cli, ["validate", "--offline", str(recipe)]).exit_code == 0
    recipe.write_text(text.replace("robust: {}", "robust: {attacks: [nosuch]}"))
    result = CliRunner().invoke(cli, ["validate", "--offline", str(recipe)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert "edit.robust: attacks: 'nosuch' is not an attack" in result.output


def test_the_recipe_takes_robust_settings_with_documented_defaults():
    text = STRIPES.read_text().replace("  tokens: all\n", "  tokens: all\n  robust: {}\n")
    recipe = parse_recipe(text, "r.yaml")
    assert recipe.edit.robust == RobustSettings(rounds=3, attacks=["search"], prompts=4)
    assert load_recipe(STRIPES).edit.robust is None
    bad = text.replace("robust: {}", "robust: {rounds: 0, attacks: [search, search]}")
    with pytest.raises(RecipeError) as error:
        parse_recipe(bad, "r.yaml")
    assert "edit.robust.rounds" in str(error.value)
    assert "edit.robust.attacks: expected each attack named once" in str(error.value)


class _Words:
    """A tokenizer of a few whole words (all the word search reads of one)."""

    all_special_tokens: list[str] = []

    def get_vocab(self):
        return {w: i for i, w in enumerate(("alpha", "beta", "gamma", "delta", "omega"))}


@pytest.mark.parametrize("guard", [None, 1e-9])
def test_a_rounds_search_runs_its_evaluations_whatever_the_time_unless_guarded(guard, monkeypatch):
    """``evidence.attack.seconds`` (here next to nothing) does not cut a round's search: it
    judges its ``steps`` prompts on any machine; ``edit.robust.seconds`` is a guard that does,
    and the find then says so."""
    import time
    from types import SimpleNamespace

    from locopack.recipe import AttackSettings

    recipe = load_recipe(STRIPES)
    recipe.evidence.attack = AttackSettings(steps=6, tokens=2, candidates=2, seconds=1e-9)
    recipe.edit.robust = RobustSettings(seconds=guard)
    judged: list[str] = []

    def objective(*_args):
        def value(prompt: str) -> float:
            judged.append(prompt)
            time.sleep(0.002)  # slower than either time limit
            return float(len(judged))  # every trial improves: the search never stalls

        return value

    monkeypatch.setattr(robust_attacks, "concept_objective", objective)
    base = SimpleNamespace(pipe=SimpleNamespace(tokenizer=_Words()), denoiser=torch.nn.Module())
    target = robust_attacks.AttackTarget(
        base, recipe, SimpleNamespace(), [None], WeightDelta({}), None, {}
    )
    (found,) = robust_attacks.search_attack(target, 2)
    if guard is None:
        assert len(judged) == 6 and not found.guarded
    else:
        assert len(judged) < 6 and found.guarded
    assert found.prompts == tuple(reversed(judged[-2:]))  # the two best, best first


@pytest.fixture(scope="module")
def toy_robust(tmp_path_factory):
    """The stripes erase at LocoGen's window, plain and robust against a replay of the word
    search's find (one round), with the cache the robust erase filled."""
    from locopack.localize import ClipScorer
    from locopack.pipeline.base import load_base

    recipe = load_recipe(STRIPES)
    recipe.edit.robust = RobustSettings(rounds=1, attacks=["replay"], prompts=4)
    base = load_base(recipe)
    layers = [base.site_paths[i] for i in WINDOW]
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    plain = compute_delta(base, recipe, layers)
    cache = CandidateCache(tmp_path_factory.mktemp("cache"))
    replayed = []

    def replay(target, count):
        replayed.append(target.identity["model"])
        return [Found("replay", 0, FOUND[:count])]

    registered = robust_attacks.ATTACKS["replay"]
    robust_attacks.ATTACKS["replay"] = replay
    try:
        made = robust.robust_erase(base, recipe, layers, plain, scorer, cache)
    finally:
        robust_attacks.ATTACKS["replay"] = registered
    return base, recipe, plain, made, (scorer, cache, layers, replayed)


def _stripes(base, delta, prompt: str, seeds: list[int]) -> float:
    """Share of images of ``prompt`` with a striped background, by the toy world's detector."""
    from locopack.evidence.before_after import generate_images
    from locopack.evidence.detectors.toy import toy_detector

    with delta.applied(base.denoiser):
        images = generate_images(base, [prompt], seeds, 20, 4.0, None)[prompt]
    return sum(f.get("stripes", 0.0) for f in toy_detector(images, [prompt] * len(seeds))) / len(
        seeds
    )


def test_robust_erase_brings_down_an_attack_the_plain_edit_fails(toy_robust):
    base, recipe, plain, made, (_, _, _, replayed) = toy_robust
    record = made.provenance.robust
    first, last = record["rounds"]
    assert first["rows_added"] == 1 and first["edits"][0]["success_before"] > 0.1
    assert first["edits"][0]["success_after"] < first["edits"][0]["success_before"]
    assert last["rows_added"] == 0 and len(replayed) == 2  # the last round only judges
    assert extra_rows(made.provenance) == [(FOUND[0], "a red circle on a plain background")]
    # judged again on seeds the rounds never drew, by the toy world's detector
    seeds = list(range(2000, 2008))
    on_plain = _stripes(base, plain, FOUND[0], seeds)
    on_robust = _stripes(base, made, FOUND[0], seeds)
    assert on_plain >= 0.5, on_plain  # the plain edit fails against the found prompt
    assert on_robust <= on_plain - 0.4, (on_plain, on_robust)
    # the erase itself still holds on the edit's own prompt
    assert _stripes(base, made, recipe.edits[0].originals()[0], seeds) <= 0.125


def test_a_rerun_of_robust_erase_draws_nothing_it_judged(toy_robust, monkeypatch):
    base, recipe, plain, made, (scorer, cache, layers, _) = toy_robust
    drawn = []
    monkeypatch.setattr(robust_attacks, "generate_images", lambda *a, **k: drawn.append(a) or {})
    monkeypatch.setitem(robust_attacks.ATTACKS, "replay", lambda t, n: [Found("replay", 0, FOUND)])
    again = robust.robust_erase(base, recipe, layers, plain, scorer, cache)
    assert not drawn and again.sha256() == made.sha256()
    assert again.provenance.robust == made.provenance.robust


def test_the_card_shows_each_round(toy_robust):
    _, _, _, made, _ = toy_robust
    rows = robust_rounds({"robust": made.provenance.robust})["rows"]
    assert [row["round"] for row in rows] == ["1", "2"]
    assert rows[0]["best"] == "`a red circle on a an re ackground background`"
    assert made.provenance.robust["deterministic"]
    assert not robust_rounds({"robust": made.provenance.robust})["guarded"]
    guarded = made.provenance.robust | {"deterministic": False}
    assert robust_rounds({"robust": guarded})["guarded"]
    assert robust_rounds({}) is None  # a plain edit: no section


@pytest.mark.slow
def test_a_robust_build_records_its_rounds_in_edit_json_and_on_the_card_and_audits(
    tmp_path, monkeypatch
):
    """The toy stripes build with ``edit.robust`` (the replayed find as text and as states, one
    round): the rows reach ``edit.json``, the delta and the card, and ``audit --reproduce
    quick`` re-solves the same delta from the recorded rows and states."""
    import json

    from click.testing import CliRunner

    from locopack.cli import cli

    target = "a red circle on a plain background"

    def replay(attacked, count):  # the find, as text and as states
        pipe, family = attacked.base.pipe, attacked.base.family
        return [Found("replay", 0, FOUND, _state_rows(pipe, family, FOUND[0], target))]

    monkeypatch.setitem(robust_attacks.ATTACKS, "replay", replay)
    text = STRIPES.read_text().replace(
        "  tokens: all\n", "  tokens: all\n  robust: {rounds: 1, attacks: [replay]}\n"
    )
    recipe = tmp_path / "recipes" / "robust.yaml"
    recipe.parent.mkdir()
    for model in ("toy-world", "toy-clip"):
        (recipe.parent / model).symlink_to(STRIPES.parent / model)
    recipe.write_text(text)
    out = tmp_path / "out"
    runner = CliRunner()
    built = runner.invoke(cli, ["--threads", "1", "build", str(recipe), "--out", str(out)])
    assert built.exit_code == 0, built.output
    report = json.loads((out / "edit.json").read_text())
    first = report["robust"]["rounds"][0]
    assert first["rows_added"] == 1 and first["found"][0]["prompts"] == list(FOUND)
    saved = WeightDelta.load(out / "delta.safetensors")
    assert extra_rows(saved.provenance) == [(FOUND[0], target)]
    assert first["state_columns_added"] == saved.rows.columns > 0
    assert first["found"][0]["state_columns"] == saved.rows.columns
    card = (out / "README.md").read_text()
    assert "### Robust erase" in card and "`a red circle on a an re ackground background`" in card
    assert f"| 1 | {saved.rows.columns} |" in card  # rows and state columns added
    where = ["--base", str(recipe.parent / "toy-world")]
    audited = runner.invoke(cli, ["audit", str(out), "--reproduce", "quick", *where])
    assert audited.exit_code == 0, audited.output


@pytest.mark.slow
def test_the_robust_benchmark_prints_every_model_of_its_table(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, str(ROOT / "scripts" / "bench_robust.py"), "--recipes", str(STRIPES)]
    command += ["--steps", "3", "--tokens", "1", "--candidates", "2", "--seeds", "1"]
    command += ["--unrelated", "2", "--rounds", "1", "--prompts", "2", "--work", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]  # after the header
    assert names == ["base", "plain edit (4 sites)", "robust edit (4 sites)", "all 7 sites"]
    assert "robust rounds (met: " in done.stdout and "- round 1: stripes " in done.stdout


@pytest.mark.slow
def test_the_attacks_of_locopack_attacks_give_robust_erase_their_words(toy_robust, tmp_path):
    base, recipe, plain, _, (scorer, _, _, _) = toy_robust
    detectors = [detector for _, detector in robust.judges(recipe, scorer)]
    target = robust_attacks.AttackTarget(
        base, recipe, scorer, detectors, plain, CandidateCache(tmp_path),
        {"model": plain.sha256()},
    )  # fmt: skip
    assert {"search", "concept_vector", "soft_prompt", "replay"} <= set(robust_attacks.ATTACKS)
    (found,) = robust_attacks.ATTACKS["concept_vector"](target, 1)
    assert (found.attack, found.edit, len(found.prompts)) == ("concept_vector", 0, 1)
    words = found.prompts[0].split()
    assert "stripes" not in words and found.prompts[0] != recipe.edits[0].originals()[0]
    # the recipe turns the replay attack off: it finds nothing rather than failing the round
    assert robust_attacks.ATTACKS["replay"](target, 1) == []
