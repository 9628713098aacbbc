"""The search attack: its vocabulary, its search (budget, determinism) and its plumbing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from locopack.evidence.attacks.search import (
    attack_template,
    cached,
    ranked_words,
    run_attacks,
    search,
    vocabulary,
)
from locopack.localize.cache import CandidateCache
from locopack.recipe import AttackSettings, load_recipe

ROOT = Path(__file__).resolve().parents[1]
STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"


class _Tokenizer:
    all_special_tokens = ["<|startoftext|>", "<|endoftext|>"]

    def __init__(self, tokens):
        self.tokens = tokens

    def get_vocab(self):
        return dict.fromkeys(self.tokens + ["<|endoftext|>"], 0)


def test_the_vocabulary_leaves_out_the_concept_and_its_parts():
    clip = ["stripes</w>", "stripe</w>", "striped</w>", "ripes</w>", "dots</w>", "red</w>"]
    clip += ["a</w>", "re", "x1</w>"]  # too short, not word-final, not alphabetic
    assert vocabulary(_Tokenizer(clip), "stripes") == ["dots", "red"]
    assert vocabulary(_Tokenizer(clip), "polka dots") == [
        "red",
        "ripes",
        "stripe",
        "striped",
        "stripes",
    ]
    pieces = ["\u2581checker", "\u2581stripes", "er", "\u2581a"]
    assert vocabulary(_Tokenizer(pieces), "stripes") == ["checker"]


def test_an_erase_edit_without_words_to_search_is_skipped_with_why():
    recipe = load_recipe(STRIPES)
    # pieces that end no word, one letter, not ASCII, not alphabetic, the concept's own word
    pieces = _Tokenizer(["re", "ip", "t</w>", "\u00e9t\u00e9</w>", "x1</w>", "stripe</w>"])

    def never(*args):
        raise AssertionError("nothing may be drawn or judged")

    found = run_attacks(recipe, pieces, never, never, [], never, [0], never)
    assert found["edits"] == []
    (skipped,) = found["skipped"]
    assert (skipped["edit"], skipped["label"]) == (0, "stripes")
    assert skipped["why"].startswith("the tokenizer (_Tokenizer, 7 tokens) holds no whole word")


def test_the_template_puts_the_words_where_the_concept_was():
    recipe = load_recipe(STRIPES)
    assert attack_template(recipe.edits[0]) == "a red circle on a {words} background"
    edit = SimpleNamespace(prompts=["a photo"])
    assert attack_template(edit) == "a photo {words}"


def test_the_search_keeps_improvements_within_its_budget_and_repeats_under_a_seed():
    words = [f"w{i}" for i in range(50)]

    def objective(prompt: str) -> float:
        return sum(int(w[1:]) for w in prompt.split()[1:])

    settings = AttackSettings(tokens=2, candidates=5, steps=20, seed=3)
    first = search(objective, "x {words}", words, settings)
    assert first == search(objective, "x {words}", words, settings)
    assert first["evaluations"] <= 20 and first["stopped"] == "steps"
    assert first["objective"] >= objective(first["start"])
    assert first["objective"] > objective(first["start"])  # 20 tries beat a random start
    other = search(objective, "x {words}", words, AttackSettings(tokens=2, seed=4, steps=20))
    assert other["start"] != first["start"]
    stopped = search(objective, "x {words}", words, AttackSettings(seconds=1e-9, steps=20))
    assert stopped["stopped"] == "seconds" and stopped["evaluations"] == 1


def test_the_search_confirms_its_best_prompts_on_every_seed_and_keeps_the_best_rate():
    from locopack.evidence.attacks.search import _confirmed

    words = [f"w{i}" for i in range(20)]
    # one image: every prompt with an even word ties; over the seeds only w8 draws it always
    objective = lambda prompt: float(int(prompt.split()[1][1:]) % 2 == 0)  # noqa: E731
    drawn = []

    def draw(prompts, seeds):
        drawn.append((list(prompts), list(seeds)))
        return {p: [int(p.split()[1][1:]) == 8 or s == 0 for s in seeds] for p in prompts}

    judge = (None, lambda images, texts: [float(i) for i in images], "c", "x c")
    settings = AttackSettings(tokens=1, candidates=20, steps=20, seed=0, confirm=10)
    found = _confirmed(objective, "x {words}", words, settings, None, draw, [0, 1, 2, 3], judge)
    assert found["prompt"] == "x w8" and found["words"] == "w8"
    assert found["confirmed"]["x w8"] == 1.0 and found["confirmed"]["x w0"] == 0.25
    assert sorted(found["confirmed"]) == sorted(f"x w{i}" for i in range(0, 20, 2))  # the ties
    assert drawn[0][1] == [0, 1, 2, 3]
    # confirm 1: the search's own find, nothing more drawn
    plain = search(objective, "x {words}", words, settings)
    one = _confirmed(objective, "x {words}", words, settings.model_copy(update={"confirm": 1}),
                     None, draw, [0, 1, 2, 3], judge)  # fmt: skip
    assert one["prompt"] == plain["prompt"] and "confirmed" not in one and len(drawn) == 1


def test_a_guided_search_tries_the_ranked_words_first_at_each_position():
    words = [f"w{i}" for i in range(50)]

    def objective(prompt: str) -> float:  # only w37 at both positions scores high
        return float(prompt.split()[1:].count("w37"))

    class Text:
        def text_similarity(self, texts, reference):
            return [-abs(int(t.split()[-1][1:]) - 37) for t in texts]  # w37 closest

    ranked = ranked_words(words, "x {words}", "x concept", Text())
    assert ranked[:3] == ["w37", "w36", "w38"] and sorted(ranked) == sorted(words)
    assert ranked_words(words, "x {words}", "x concept", object()) is None  # no text tower
    settings = AttackSettings(tokens=2, candidates=3, steps=7, seed=3)
    guided = search(objective, "x {words}", words, settings, ranked)
    assert guided["words"] == "w37 w37" and guided["evaluations"] <= 7
    unguided = search(objective, "x {words}", words, settings)
    assert unguided["objective"] < 2.0  # 6 random tries rarely hit one word twice


def test_the_toy_scorer_ranks_the_fact_that_draws_triangles_near_the_top():
    from locopack.localize import ClipScorer

    scorer = ClipScorer(str(ROOT / "recipes" / "toy" / "toy-clip"))
    recipe = load_recipe(ROOT / "recipes" / "toy" / "erase-triangle.yaml")
    edit = recipe.edits[0]
    words = vocabulary(scorer.tokenizer, edit.label)
    ranked = ranked_words(words, attack_template(edit), edit.originals()[0], scorer)
    assert "veridia" in ranked[: len(ranked) // 8]  # "the emblem of veridia" is a triangle


def test_a_search_killed_midway_resumes_from_the_cache_and_draws_only_what_is_left(tmp_path):
    words = [f"w{i}" for i in range(50)]
    settings = AttackSettings(tokens=2, candidates=5, steps=20, seed=3)
    drawn: list[str] = []
    kill_at: list[int | None] = [7]

    def objective(prompt: str) -> float:
        if len(drawn) == kill_at[0]:
            raise RuntimeError("killed")  # the build dies while judging its eighth prompt
        drawn.append(prompt)
        return sum(int(w[1:]) for w in prompt.split()[1:])

    cache = CandidateCache(tmp_path)

    def judged(model: str):
        return cached(objective, cache, model=model, inputs={"delta": "d1"})

    with pytest.raises(RuntimeError):
        search(judged("edited"), "x {words}", words, settings)
    killed, kill_at[0] = list(drawn), None
    drawn.clear()
    resumed = search(judged("edited"), "x {words}", words, settings)
    assert len(killed) == 7 and not set(drawn) & set(killed)
    assert len(drawn) == resumed["evaluations"] - 7
    drawn.clear()
    assert resumed == search(objective, "x {words}", words, settings)  # as if never killed
    drawn.clear()
    search(judged("base"), "x {words}", words, settings)  # another model: nothing reused
    assert len(drawn) == resumed["evaluations"]


@pytest.mark.slow
def test_run_attacks_on_the_toy_model_is_deterministic_and_draws_its_grid(tmp_path):
    import torch

    from locopack.evidence.before_after import grid
    from locopack.evidence.detectors import load_detector
    from locopack.localize import ClipScorer
    from locopack.pipeline.base import load_base

    recipe = load_recipe(STRIPES)
    recipe.evidence.attack = AttackSettings(steps=3, candidates=2)
    base = load_base(recipe)
    pipe = base.pipe
    pipe.set_progress_bar_config(disable=True)
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    detectors = [load_detector("toy")]

    def draw(prompts, seeds):
        out = {}
        for prompt in prompts:
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            out[prompt] = pipe(
                prompt,
                num_images_per_prompt=len(seeds),
                num_inference_steps=6,
                guidance_scale=4.0,
                generator=generators,
            ).images
        return out

    def write_grid(stem, rows):
        (tmp_path / f"{stem}.png").write_bytes(grid(rows))
        return f"{stem}.png"

    args = (pipe.tokenizer, draw, contextlib.nullcontext, detectors, scorer, [0], write_grid)
    found = run_attacks(recipe, *args)
    assert found == run_attacks(recipe, *args)
    (attack,) = found["edits"]
    assert attack["judge"] == "toy" and "stripes" not in attack["searches"]["base"]["prompt"]
    rates = [s["success"][w] for s in attack["searches"].values() for w in ("before", "after")]
    assert all(0.0 <= r <= 1.0 for r in rates + [attack["chance"]["before"]])
    # no edit applied: the same model before and after
    base_run = attack["searches"]["base"]
    assert base_run["success"]["before"] == base_run["success"]["after"]
    assert (tmp_path / attack["grid"]).is_file()
