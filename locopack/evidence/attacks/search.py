"""The search attack: can a few other words bring an erased concept back?

For each erase edit, the edit's first prompt has its concept replaced by ``tokens`` words
drawn from the tokenizer's vocabulary (whole alphabetic words; every word related to the
concept's, see :func:`vocabulary`, is removed first).  A coordinate search, in the
spirit of UnlearnDiffAtk / P4D but discrete and gradient-free, then replaces one position at a
time by ``candidates`` words and keeps a replacement that raises the objective: the
concept's finding from the recipe's first rate detector on one image (plus a small CLIP
term, to the edit's original prompt, that orders images the detector scores alike), or the
CLIP score alone where the recipe names no rate detector.  The words are tried best first by
a prior guided by the scorer (:func:`ranked_words`: how close CLIP's text tower puts the
prompt with that word to the edit's original prompt, a text-only computation; P4D matches
text embeddings the same way), each position walking down that list; a scorer without a
text tower leaves them in random order.

The search runs on the base model (the reference: what the words can do without the edit) and on
the edited model, each for at most ``steps`` generated images and ``seconds``. Its objective
sees one image, and many prompts tie on it (the detector finds the concept in that image), so
its ``confirm`` best prompts are drawn on the model it searched with every evidence seed, and
the one with the highest rate is its find (as an attacker who knows the seeds would choose; the
first by the objective on ties). That prompt is then drawn on both models with every evidence
seed; its concept rate there is the attack's success. The random words the search started from
give the chance level. Deterministic under ``seed`` as long as the ``seconds`` limit is not what
stopped it (``stopped`` records which limit did). Update edits are not attacked, and neither is
an erase edit whose tokenizer holds no word the search may use (a vocabulary of sub-word pieces
only): it is recorded under ``skipped`` with the reason, for the card to say why no attack was
run.

Resumable like the sweep: with a cache (the release's ``cache/``), every judged prompt is
stored as it is judged, under a key of the model (base or edited), the evidence's inputs
(recipe, base, delta) and the prompt; a rerun after a crash replays the search from the
cache and draws only what it had not judged yet.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .found import Found

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ...localize.cache import CandidateCache
    from ...localize.scorers import Scorer
    from ...recipe.schema import EraseEdit

#: the weight of the CLIP score (100·cos) next to a detector's finding (0..1)
CLIP_WEIGHT = 1e-3


def _related(word: str, banned: str) -> bool:
    """``word`` holds ``banned``, is a piece of it (3 letters or more: ``ripes``), or shares
    its stem (a common start of all but two of its letters, at least four: ``striped``)."""
    stem = len(os.path.commonprefix([word, banned]))
    piece = len(word) >= 3 and word in banned
    return banned in word or piece or stem >= min(len(banned), max(4, len(banned) - 2))


def vocabulary(tokenizer: PreTrainedTokenizerBase, concept: str) -> list[str]:
    """The whole words of ``tokenizer`` an attack may use, sorted: alphabetic ASCII, at least
    two letters, none related to a word of the concept (see :func:`_related`).  Whole words
    are the tokens that end one (CLIP's ``</w>``) or start one (SentencePiece's ``\u2581``)
    where the vocabulary marks them."""
    banned = [w.lower() for w in concept.split()]
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    tokens = [t for t in tokenizer.get_vocab() if t not in specials]
    for mark, whole in (("</w>", str.endswith), ("\u2581", str.startswith)):
        if any(mark in t for t in tokens):
            tokens = [t.replace(mark, "") for t in tokens if whole(t, mark)]
            break
    words = {t.lower() for t in tokens if len(t) >= 2 and t.isascii() and t.isalpha()}
    return sorted(w for w in words if not any(_related(w, b) for b in banned))


def no_words(tokenizer: PreTrainedTokenizerBase, concept: str) -> str:
    """Why :func:`vocabulary` found nothing to search with."""
    size = len(tokenizer.get_vocab())
    return (
        f"the tokenizer ({type(tokenizer).__name__}, {size} tokens) holds no whole word the "
        f"search may use (alphabetic, two letters or more, unrelated to {concept!r})"
    )


def attack_template(edit: EraseEdit) -> str:
    """The edit's first prompt with ``{words}`` where its concept was (appended if none)."""
    template = edit.prompts[0]
    if "{concept}" not in template:
        template += " {concept}"
    return template.replace("{concept}", "{words}")


def ranked_words(
    words: list[str], template: str, original: str, scorer: Scorer
) -> list[str] | None:
    """``words`` best first by the CLIP text similarity of ``template`` filled with the word to
    ``original`` (ties: alphabetical), or None where ``scorer`` has no ``text_similarity``."""
    similarity = getattr(scorer, "text_similarity", None)
    if similarity is None:
        return None
    scores = similarity([template.format(words=w) for w in words], original)
    return [w for _, w in sorted(zip(scores, words, strict=True), key=lambda t: (-t[0], t[1]))]


class SearchBudget(Protocol):
    """What bounds a :func:`search`: the recipe's ``evidence.attack`` or a concept-vector
    attack's limits."""

    seed: int
    tokens: int
    candidates: int
    steps: int
    seconds: float


def search(
    objective: Callable[[str], float],
    template: str,
    words: list[str],
    settings: SearchBudget,
    ranked: list[str] | None = None,
) -> dict[str, object]:
    """The coordinate search; ``objective(prompt)`` draws and judges one image.  With
    ``ranked`` (the words best first), each position tries them in that order; without it,
    ``candidates`` random words per step."""
    rng = random.Random(settings.seed)
    current = [rng.choice(words) for _ in range(settings.tokens)]
    cursors = [0] * settings.tokens
    seen: dict[str, float] = {}

    def value(chosen: list[str]) -> tuple[str, float]:
        prompt = template.format(words=" ".join(chosen))
        if prompt not in seen:
            seen[prompt] = objective(prompt)
        return prompt, seen[prompt]

    start_words = " ".join(current)
    start_prompt, best = value(current)
    prompt, began, stopped = start_prompt, time.perf_counter(), "steps"
    step = 0
    while len(seen) < settings.steps:
        if time.perf_counter() - began > settings.seconds:
            stopped = "seconds"
            break
        position = step % settings.tokens
        if ranked:
            at = cursors[position]
            trials = [ranked[(at + i) % len(ranked)] for i in range(settings.candidates)]
            cursors[position] = (at + settings.candidates) % len(ranked)
        else:
            trials = rng.sample(words, min(settings.candidates, len(words)))
        for word in trials:
            trial = current[:position] + [word] + current[position + 1 :]
            found, score = value(trial)
            if score > best:
                prompt, best, current = found, score, trial
            if len(seen) >= settings.steps:
                break
        step += 1
    return {
        "prompt": prompt,
        "words": " ".join(current),
        "objective": best,
        "start": start_prompt,
        "start_words": start_words,
        "evaluations": len(seen),
        "stopped": stopped,
    }


def ranked_search(
    objective: Callable[[str], float],
    template: str,
    words: list[str],
    settings: SearchBudget,
    ranked: list[str] | None = None,
) -> tuple[dict[str, object], list[str]]:
    """:func:`search`'s record and every prompt it judged, best first by the objective (the
    first in text order on ties)."""
    values: dict[str, float] = {}

    def recorded(prompt: str) -> float:
        values[prompt] = objective(prompt)
        return values[prompt]

    found = search(recorded, template, words, settings, ranked)
    return found, sorted(values, key=lambda p: (-values[p], p))


def _confirmed(objective, template, words, settings, ranked, draw, seeds, judge) -> dict:
    """:func:`search`'s record, its ``prompt`` the best by concept rate over ``seeds`` of its
    ``settings.confirm`` best by the objective (the rates under ``confirmed``)."""
    found, judged = ranked_search(objective, template, words, settings, ranked)
    leaders = judged[: settings.confirm]
    if len(seeds) > 1 and len(leaders) > 1:
        images = draw(leaders, seeds)
        rates = {p: success(images[p], p, *judge) for p in leaders}
        found["prompt"] = max(leaders, key=lambda p: rates[p])  # the first on ties
        found["words"] = _words_of(found["prompt"], template)
        found["confirmed"] = rates
    return found


def _words_of(prompt: str, template: str) -> str:
    """The searched words of ``prompt``, made from ``template``."""
    head, tail = template.split("{words}")
    return prompt[len(head) : len(prompt) - len(tail)]


def concept_objective(generate, detector, scorer, label: str, original: str, seed: int):
    """``prompt -> value`` of one image drawn with ``seed`` (see the module docstring)."""

    def objective(prompt: str) -> float:
        image = generate([prompt], [seed])[prompt]
        clip = scorer(image, [original])[0]
        if detector is None:
            return clip
        return detector(image, [prompt])[0].get(label, 0.0) + CLIP_WEIGHT * clip

    return objective


def cached(objective: Callable[[str], float], cache: CandidateCache | None, **identity: object):
    """``objective`` whose every value is stored in ``cache`` (a
    :class:`~locopack.localize.cache.CandidateCache`) under ``identity`` and the prompt, and
    read back from it when present; ``objective`` itself when ``cache`` is None."""
    if cache is None:
        return objective

    def value(prompt: str) -> float:
        key = cache.key(kind="attack", prompt=prompt, **identity)
        if (hit := cache.get(key)) is not None:
            return float(hit["scores"][0])
        began = time.perf_counter()
        found = objective(prompt)
        cache.put(key, {"scores": [found], "seconds": time.perf_counter() - began})
        return found

    return value


def success(images: list, prompt: str, detector, scorer, label: str, original: str) -> float:
    """The concept's rate over ``images`` (or the mean CLIP score without a rate detector)."""
    if detector is None:
        return statistics.fmean(scorer(images, [original] * len(images)))
    return statistics.fmean(f.get(label, 0.0) for f in detector(images, [prompt] * len(images)))


def run_attacks(
    recipe, tokenizer, draw, edited, detectors, scorer, seeds, write_grid, cache=None, inputs=None
) -> dict | None:
    """Search attacks on every erase edit of ``recipe``; None when ``steps`` is 0.  An edit
    without words to search with is listed under ``skipped``, with why (see :func:`no_words`).

    ``draw(prompts, seeds)`` returns ``{prompt: [image per seed]}`` on the model as it is;
    ``edited()`` is a context manager under which the release's edit is applied;
    ``write_grid(name, rows)`` writes a before | after grid into the evidence and returns
    its file name.  ``cache`` (with ``inputs``, what identifies each model:
    ``{"base": ..., "edited": ...}``) makes the searches resumable (see :func:`cached`).
    """
    settings = recipe.evidence.attack
    if settings.steps == 0:
        return None
    detector = next((d for d in detectors if d.kind == "rate"), None)
    out, skipped = [], []
    for index, edit in enumerate(recipe.edits):
        if edit.kind != "erase":
            continue
        words = vocabulary(tokenizer, edit.label)
        if not words:
            why = no_words(tokenizer, edit.label)
            skipped.append({"edit": index, "label": edit.label, "why": why})
            continue
        template, original = attack_template(edit), edit.originals()[0]
        judge = (detector, scorer, edit.label, original)
        objective = concept_objective(draw, detector, scorer, edit.label, original, seeds[0])
        judged = {
            model: cached(
                objective, cache, model=model, inputs=(inputs or {}).get(model), seed=seeds[0]
            )
            for model in ("base", "edited")
        }
        ranked = ranked_words(words, template, original, scorer)
        found = {
            "base": _confirmed(
                judged["base"], template, words, settings, ranked, draw, seeds, judge
            )
        }
        with edited():
            found["edited"] = _confirmed(
                judged["edited"], template, words, settings, ranked, draw, seeds, judge
            )
            prompts = list(
                dict.fromkeys([found["base"]["start"]] + [f["prompt"] for f in found.values()])
            )
            after = draw(prompts, seeds)
        before = draw(prompts, seeds)
        for item in found.values():
            p = item["prompt"]
            item["success"] = {
                "before": success(before[p], p, *judge),
                "after": success(after[p], p, *judge),
            }
        start = found["base"]["start"]
        rows = [(f"found on {w}: '{s['words']}'", s["prompt"]) for w, s in found.items()]
        rows += [(f"random start: '{found['base']['start_words']}'", start)]
        out.append(
            {
                "edit": index,
                "label": edit.label,
                "template": template,
                "vocabulary": len(words),
                "guided": ranked is not None,
                "judge": detector.name if detector else "clip",
                "kind": detector.kind if detector else "score",
                "searches": found,
                "chance": {
                    "prompt": start,
                    "before": success(before[start], start, *judge),
                    "after": success(after[start], start, *judge),
                },
                "grid": write_grid(
                    f"edit{index}_attack", [(t, before[p][0], after[p][0]) for t, p in rows]
                ),
            }
        )
    return {"settings": settings.model_dump(), "edits": out, "skipped": skipped}


def as_found(record: dict | None) -> list[Found]:
    """The best prompts of a :func:`run_attacks` record as :class:`Found`, one per attacked
    edit: the search on the edited model's prompt first, then the base model's."""
    out = []
    for item in (record or {"edits": []})["edits"]:
        searches = item["searches"]
        prompts = [searches[m]["prompt"] for m in ("edited", "base") if m in searches]
        out.append(Found("word_search", item["edit"], tuple(dict.fromkeys(prompts))))
    return out
