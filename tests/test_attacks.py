"""The attacks of :mod:`locopack.evidence.attacks` on the toy world: their plumbing checked against
direct computations, each one deterministic, resumable and able to fail; the replay file's rows; the
attack table and the worst-attack requirement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from locopack.errors import RecipeError
from locopack.evidence.attacks import ATTACKS, AttackContext, worst
from locopack.evidence.attacks.concept_vector import concept_direction
from locopack.evidence.attacks.feed import single_token, soft_tokens
from locopack.evidence.attacks.replay import read_prompts_file
from locopack.hooks.feed import feeding
from locopack.localize.cache import CandidateCache
from locopack.models import LoadedBase
from locopack.recipe import load_recipe
from locopack.recipe.attacks import (
    AttacksSettings,
    ConceptVectorSettings,
    ReplaySettings,
    SoftPromptSettings,
)

ROOT = Path(__file__).resolve().parents[1]
STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"
#: LocoGen's window on the toy stripes recipe (``scripts/bench_attack.py`` prints it)
WINDOW = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
]
#: small budgets: the tests check behaviour, the benchmark measures strength
SMALL = {
    "concept_vector": ConceptVectorSettings(prompts=2, steps=12),
    "soft_prompt": SoftPromptSettings(),  # the default: its words must bring stripes back
    "replay": None,
}


# --- the replay file ---------------------------------------------------------------------------


def test_a_replay_file_reads_lines_and_csv_columns(tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("a red circle\n\n  a zebra pattern  \n", encoding="utf-8")
    assert read_prompts_file(lines, "prompt") == ["a red circle", "a zebra pattern"]
    table = tmp_path / "prompts.csv"
    table.write_text('id,prompt\n1,"a circle, red"\n2,a square\n', encoding="utf-8")
    assert read_prompts_file(table, "prompt") == ["a circle, red", "a square"]


@pytest.mark.parametrize(
    ("name", "content", "row", "what"),
    [
        ("p.csv", b"id,prompt\n1,a\n2,\n", 3, "expected a prompt, found an empty one"),
        ("p.csv", b"id,prompt\n1,a\n2,b,c\n", 3, "expected 2 cells as in the header, found 3"),
        ("p.csv", b"id,text\n1,a\n", 1, "expected a header with a 'prompt' column"),
        ("p.txt", b"ok\nred \x1b[31m circle\n", 2, "control characters"),
        ("p.txt", b"ok\nok\n\xff\xfe bad\n", 3, "expected UTF-8 text"),
    ],
)
def test_a_bad_row_is_one_error_naming_it(tmp_path, name, content, row, what):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecipeError) as caught:
        read_prompts_file(path, "prompt")
    message = str(caught.value)
    assert message.startswith(f"{name}, row {row}: ") and what in message
    assert "\n" not in message


def test_validate_names_the_bad_row_in_one_line(tmp_path):
    from click.testing import CliRunner

    from locopack.cli import cli

    (tmp_path / "attacks.csv").write_text('prompt\nfine\n""\n', encoding="utf-8")
    text = STRIPES.read_text().replace("./toy", str(STRIPES.parent / "toy"))
    text = text.replace("evidence:\n", "evidence:\n  attacks: {replay: ./attacks.csv}\n", 1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--threads", "1", "validate", str(recipe)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "evidence.attacks.replay.prompts: attacks.csv, row 3: expected a prompt" in errors[0]


def test_a_hub_dataset_offline_is_one_clear_line(monkeypatch):
    from locopack.evidence.attacks.replay import read_hub_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RecipeError, match=r"^'org/prompts' is a Hub dataset and the Hub is offline"
    ):
        read_hub_dataset("org/prompts", ReplaySettings(prompts="org/prompts"))


def test_attacks_turn_off_with_false_and_a_bare_replay_file_is_its_prompts():
    settings = AttacksSettings.model_validate({"soft_prompt": False, "replay": "p.txt"})
    assert settings.soft_prompt is None and settings.concept_vector is not None
    assert settings.replay == ReplaySettings(prompts="p.txt")


# --- the table and the requirement -------------------------------------------------------------


def _rows(*edited: float) -> dict:
    rows = [
        {"attack": f"a{i}", "name": f"a{i}", "edit": 0, "label": "stripes", "budget": "b",
         "base": 1.0, "edited": e, "chance": None, "found": None}
        for i, e in enumerate(edited)
    ]  # fmt: skip
    protocol = {"detector": "toy", "kind": "rate", "threshold": "its decision", "steps": 20,
                "version": "locopack 0.1.0", "seeds": [1000, 1001], "guidance": 4.0}  # fmt: skip
    return {"protocol": protocol, "rows": rows, "skipped": [], "budgets": {}}


def test_the_requirement_judges_the_worst_attack():
    from locopack.evidence.verdict import judge

    text = STRIPES.read_text().replace("./toy", str(STRIPES.parent / "toy"))
    text = text.replace("    held_out:", "    requirements: {attack_success: 0.3}\n    held_out:")
    recipe = load_recipe_text(text)
    attacks = _rows(0.1, 0.5, 0.2)
    assert worst(attacks, 0)["edited"] == 0.5 and worst(attacks, 1) is None
    sets = {"edited": {"detectors": {"toy": {"kind": "rate", "after": {"concept": 0.0}}},
                       "change": {"ssim": [1.0]}}}  # fmt: skip
    evidence = {"edits": [{"sets": sets}], "attacks": attacks, "attack": None}
    (item,) = [i for i in judge(recipe, evidence)["items"] if i["requirement"] == "attack_success"]
    assert (item["measured"], item["met"]) == (0.5, False)


def load_recipe_text(text: str):
    from locopack.recipe import parse_recipe

    return parse_recipe(text, str(STRIPES))


def test_the_card_shows_one_attack_table_and_the_protocol_once():
    from locopack.release.card_sections import robustness

    table = robustness({"edits": [], "attacks": _rows(0.1, 0.5)})["attacks"]
    protocol = table["protocol"]  # one protocol for every row: the template states it once
    assert protocol["rate"] and protocol["detector"] == "toy"
    assert (protocol["threshold"], protocol["version"]) == ("its decision", "locopack 0\\.1\\.0")
    cells = [
        [r[k] for k in ("label", "name", "budget", "base", "edited", "chance")]
        for r in table["rows"]
    ]
    assert ["stripes", "a1", "b", "100%", "50%", "–"] in cells


# --- the attacks on the toy model --------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    """The toy pipeline, its stripes recipe (8 denoising steps), detector and plain edit."""
    from locopack.edit import compute_delta
    from locopack.evidence.detectors import load_detector
    from locopack.localize import ClipScorer
    from locopack.pipeline.base import load_base

    recipe = load_recipe(STRIPES)
    base = load_base(recipe)
    base.pipe.set_progress_bar_config(disable=True)
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    delta = compute_delta(base, recipe, WINDOW)
    return recipe, base.pipe, base.family, load_detector("toy"), scorer, delta


def _context(toy, drawn: list, cache=None, kill_at: int | None = None) -> AttackContext:
    from locopack.evidence.before_after import generate_images

    recipe, pipe, family, detector, scorer, delta = toy

    def draw(prompts, seeds):
        if kill_at is not None and len(drawn) == kill_at:
            raise RuntimeError("killed")
        drawn.append(tuple(prompts))
        return generate_images(LoadedBase(pipe, family), prompts, seeds, 8, 4.0, None)

    return AttackContext(
        pipe, family, recipe, draw, lambda: delta.applied(pipe.unet), detector, scorer,
        [1000], 8, 4.0, None, lambda stem, rows: "", cache=cache, inputs={"delta": "plain"},
    )  # fmt: skip


def test_feeding_a_prompts_states_draws_that_prompt(toy):
    recipe, pipe, family, *_ = toy
    ctx = _context(toy, [])
    states, _ = family.given_text(pipe, ["a red circle on a stripes background"])
    with torch.no_grad(), feeding(family, ctx.denoiser, states):
        fed = ctx.draw(["a blue square with dots"], [3])["a blue square with dots"][0]
    direct = ctx.draw(["a red circle on a stripes background"], [3])
    direct = direct["a red circle on a stripes background"][0]
    assert np.abs(np.asarray(fed, float) - np.asarray(direct, float)).max() <= 1


def test_soft_tokens_equal_to_word_embeddings_encode_as_those_words(toy):
    _, pipe, family, *_ = toy
    table = pipe.text_encoder.get_input_embeddings().weight
    ids = [single_token(pipe.tokenizer, w) for w in ("zorbania", "dots")]
    with torch.no_grad(), soft_tokens(pipe, "veridia", {"text_encoder": table[ids]}):
        soft = family.encode(pipe, ["a circle on a veridia veridia background"])
        empty = family.encode(pipe, [""])  # no placeholder: untouched
    words = family.encode(pipe, ["a circle on a zorbania dots background"])
    assert torch.equal(soft, words) and torch.equal(empty, family.encode(pipe, [""]))


def test_the_concept_direction_is_the_mean_difference_of_the_pairs(toy):
    recipe, pipe, family, *_ = toy
    edit = recipe.edits[0]
    vector, free = concept_direction(_context(toy, []), edit, 3)

    def encoded(prompt):
        return pipe.encode_prompt([prompt], "cpu", 1, False)[0]

    with torch.no_grad():
        pairs = [
            encoded(p.replace("stripes ", "").replace(" stripes", "")) - encoded(p)
            for p in edit.originals()[:3]
        ]
    assert free[0] == "a red circle on a background"
    assert torch.allclose(vector, -torch.cat(pairs).mean(dim=0), atol=1e-6)


def _run(name: str, ctx: AttackContext):
    with torch.no_grad():
        return ATTACKS[name].run(ctx, SMALL[name])


def _replay_recipe(toy, tmp_path):
    recipe = toy[0].model_copy(deep=True)
    path = tmp_path / "attacks.txt"
    path.write_text("a red circle on a stripes background\na blue square with stripes\n")
    recipe.evidence.attacks.replay = ReplaySettings(prompts=str(path))
    SMALL["replay"] = recipe.evidence.attacks.replay
    return (recipe, *toy[1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["concept_vector", "soft_prompt", "replay"])
def test_each_attack_repeats_resumes_without_redrawing_and_can_fail(
    toy, tmp_path, name, monkeypatch
):
    from locopack.evidence.attacks import soft_prompt

    toy = _replay_recipe(toy, tmp_path) if name == "replay" else toy
    optimised: list[int] = []
    real = soft_prompt.optimise
    monkeypatch.setattr(soft_prompt, "optimise", lambda *a: optimised.append(1) or real(*a))
    fresh, again = [], []
    first = _run(name, _context(toy, fresh))
    assert first.rows and _run(name, _context(toy, again)).rows == first.rows  # deterministic
    assert again == fresh
    # killed while drawing its second image set, then run again on the same cache
    cache, killed, resumed = CandidateCache(tmp_path / "cache"), [], []
    optimised.clear()
    with pytest.raises(RuntimeError, match="killed"):
        _run(name, _context(toy, killed, cache, kill_at=1))
    before = len(optimised)
    result = _run(name, _context(toy, resumed, cache))
    assert result.rows == first.rows and len(killed) == 1
    assert sorted(killed + resumed) == sorted(fresh)  # nothing judged is drawn again
    if name == "soft_prompt":  # the base model's embeddings came back from the cache
        assert before == 1 and len(optimised) - before == 1
    # the attack can fail: the plain stripes edit lowers what it brings back
    rows = {r["name"]: r for r in first.rows}
    main = {"concept_vector": "concept vector (states)", "soft_prompt": "soft prompt (words)",
            "replay": "prompt-set replay"}[name]  # fmt: skip
    assert rows[main]["base"] >= 0.5 > rows[main]["edited"], rows[main]
    assert all(0.0 <= r[m] <= 1.0 for r in first.rows for m in ("base", "edited"))
    (found,) = first.found
    assert found.attack == name and found.edit == 0
    if name == "concept_vector":  # the states drawn: the concept-free prompt's plus v
        vector, free = concept_direction(_context(toy, []), toy[0].edits[0], 2)
        expected = toy[2].given_text(toy[1], free[:1])[0] + vector
        assert torch.allclose(found.rows.originals, expected, atol=1e-6)
        # mapped to the concept-free prompt's own states, at its non-padding positions
        free_states = toy[2].given_text(toy[1], free[:1])[0]
        assert torch.allclose(found.rows.targets, free_states, atol=1e-6)
        assert [k for k, _, _ in found.rows.pairs] == [0] * len(found.rows.pairs)
        assert all(i == j for _, i, j in found.rows.pairs)
    if name == "soft_prompt":  # "<start> a red circle on a" precede the 3 soft tokens
        rows = found.rows
        assert rows.originals.shape == rows.targets.shape == (1, 77, 64)
        # under the recipe's "all": every token, the 3 soft ones onto the target's "plain"
        assert rows.pairs[:9] == tuple((0, i, i) for i in range(6)) + ((0, 6, 6),) * 1 + (
            (0, 7, 6),
            (0, 8, 6),
        )
        assert rows.pairs[-1][1:] == (10, 8)  # end of text onto the target's


def test_the_word_search_returns_its_best_prompts_as_found():
    from locopack.evidence.attacks import Found
    from locopack.evidence.attacks.search import as_found

    searches = {"base": {"prompt": "x a b"}, "edited": {"prompt": "x c d"}}
    same = {"base": {"prompt": "x a b"}, "edited": {"prompt": "x a b"}}
    record = {"edits": [{"edit": 1, "searches": searches}, {"edit": 2, "searches": same}]}
    assert as_found(record) == [
        Found("word_search", 1, ("x c d", "x a b")),
        Found("word_search", 2, ("x a b",)),
    ]
    assert as_found(None) == []


def test_a_family_whose_text_cannot_be_given_as_states_is_skipped_with_why(toy):
    from locopack.errors import ModelLayoutError
    from locopack.evidence.attacks.concept_vector import ConceptVector
    from locopack.evidence.attacks.soft_prompt import SoftPrompt

    class Unfed(toy[2]):
        @classmethod
        def sites(cls, denoiser):
            raise ModelLayoutError("no site reads one text here")

    drawn: list = []
    ctx = _context(toy, drawn)
    ctx.family = Unfed
    for attack, settings in (
        (ConceptVector, ConceptVectorSettings(steps=0)),
        (SoftPrompt, SoftPromptSettings(steps=1, timesteps=1)),
    ):
        with torch.no_grad():
            run = attack.run(ctx, settings)
        assert run.rows == [] and drawn == []
        (skipped,) = run.skipped
        assert skipped["why"] == "its text cannot be given as states (no site reads one text here)"


def test_the_soft_prompts_words_are_among_the_nearest_and_lower_its_objective(toy):
    from locopack.evidence.attacks.search import attack_template, vocabulary
    from locopack.evidence.attacks.soft_optimise import record_trajectory, trajectory_loss
    from locopack.evidence.attacks.soft_project import CALLS, evenly_spaced, project

    recipe, pipe, family, *_ = toy
    ctx, edit = _context(toy, []), recipe.edits[0]
    template, words = attack_template(edit), vocabulary(pipe.tokenizer, edit.label)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    ids = [single_token(pipe.tokenizer, w) for w in ("dots", "checker", "red")]
    noise = torch.randn(3, table.shape[1], generator=torch.Generator().manual_seed(0))
    vectors = {"text_encoder": table[ids] + table.std() * noise}
    with torch.no_grad():
        trajectory = record_trajectory(ctx, edit.originals()[0], 0)
    calls = evenly_spaced(trajectory, CALLS)

    def nearest(vector, count):  # cosine, one word at a time
        word_ids = [single_token(pipe.tokenizer, w) for w in words]
        cos = [float(torch.cosine_similarity(vector, table[i], dim=0)) for i in word_ids]
        return [w for _, w in sorted(zip(cos, words, strict=True), key=lambda t: -t[0])[:count]]

    def loss(chosen):
        with torch.no_grad():
            states, pooled = family.given_text(pipe, [template.format(words=" ".join(chosen))])
            return float(trajectory_loss(ctx, states, pooled, calls))

    first = [nearest(v, 1)[0] for v in vectors["text_encoder"]]
    assert project(ctx, vectors, words, template, trajectory, 1) == first
    chosen = project(ctx, vectors, words, template, trajectory, 4)
    assert chosen == project(ctx, vectors, words, template, trajectory, 4)  # deterministic
    assert all(w in nearest(v, 4) for w, v in zip(chosen, vectors["text_encoder"], strict=True))
    assert chosen != first and loss(chosen) < loss(first)
    # the last position was searched last: none of its other candidates does better
    last = nearest(vectors["text_encoder"][-1], 4)
    assert all(loss(chosen[:-1] + [w]) >= loss(chosen) for w in last)
