"""Which token states form the edit's columns X (originals) and Y (targets).

The text sequence the sites read may join several encoders' tokens: SD3/SD3.5 hold CLIP's 77
positions, then T5's (:meth:`~locopack.models.base.ModelFamily.text_parts`).  A rule picks
positions in each part, counted within the part and paired within it.  Five rules (recipe
``edit.tokens``):

- ``cover`` (the default): in every part, the concept's tokens in the original prompt, each
  paired with its aligned token in the target, and the last token before end-of-text paired
  with the target's.  A prompt that does not name the concept (or a part that truncates it
  away) gives its last token alone.  With one part and a prompt that ends in the concept this
  is ``last`` plus the concept's other tokens.
- ``last``: the last token before end-of-text of the original and of the target prompt, in the
  first part only (what the reference implementation of LocoEdit does; on SD3 the CLIP token,
  and the concept's T5 tokens are not edited).
- ``concept``: the concept's tokens in every part, each paired with its aligned token.
- ``all``: every non-padding token of every part, each paired with its aligned token.
- ``sequence``: every position the denoiser attends to, padding included: the non-padding
  tokens as under ``all``, then padding position ``n_o + k`` paired with ``n_t + k`` (within
  each part).  With CLIP's causal text encoder the padding states carry the whole prompt, so an
  edit that must also change them (a fact update, whose prompt has no single concept token)
  needs this rule.

Preserve prompts (the recipe's, each edit's and ``edit.neighbours``) keep every position the
sites read, whatever the rule but ``last`` (:func:`preserve_positions`).

Alignment is a diff of the two token sequences (:func:`align`): tokens in common keep their
partner; a replaced span maps proportionally onto its replacement (``van gogh`` -> ``a
painter``); a deleted span maps to the target token just before the deletion.

Which positions of which part each edit prompt contributed is recorded
(:attr:`EditPrompts.rows`, the delta's ``token_rows``; the model card prints them).

Extra rows (robust erase, ``edit.robust``): prompts an attack found that bring the concept back
without naming it, each paired with a target.  They join the originals and targets; having no
concept to find, ``cover`` and ``concept`` take the tokens where such a prompt differs from its
target instead (by the same diff), ``cover`` adding the last token (:func:`found_pairs`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict

from ..models.base import TextPart
from ..prompt_samples import neighbours
from ..state_rows import StateRows

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe

TokenRule = Literal["cover", "last", "concept", "all", "sequence"]


def align(original: list[int], target: list[int]) -> list[int]:
    """For each position of ``original``, a position in ``target``.

    Args:
        original: token ids of the original prompt (no padding).
        target: token ids of the target prompt (no padding).

    Returns:
        A list as long as ``original`` of indices into ``target``.
    """
    mapping = [0] * len(original)
    matcher = difflib.SequenceMatcher(a=original, b=target, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for i in range(i1, i2):
            if tag == "equal":
                mapping[i] = j1 + (i - i1)
            elif j2 > j1:  # replace (or an insert-adjacent span): spread proportionally
                mapping[i] = j1 + (i - i1) * (j2 - j1) // (i2 - i1)
            else:  # delete: the target token just before the deleted span
                mapping[i] = max(j1 - 1, 0)
    return mapping


#: pairs one part contributes: (part, original, target, concept) -> [(i in original, j)]
PartRule = Callable[[TextPart, str, str, str], list[tuple[int, int]]]


def _last(part: TextPart, original: str, target: str, concept: str) -> list[tuple[int, int]]:
    return [(part.last_token(original), part.last_token(target))]


def _aligned(part: TextPart, original: str, target: str) -> list[int]:
    return align(part.token_ids(original), part.token_ids(target))


def _concept(part: TextPart, original: str, target: str, concept: str) -> list[tuple[int, int]]:
    mapping = _aligned(part, original, target)
    return [(i, mapping[i]) for i in part.concept_positions(original, concept)]


def _cover(part: TextPart, original: str, target: str, concept: str) -> list[tuple[int, int]]:
    mapping = _aligned(part, original, target)
    pairs = {i: mapping[i] for i in part.find(original, concept)}
    pairs.update(_last(part, original, target, concept))
    return sorted(pairs.items())


def _all(part: TextPart, original: str, target: str, concept: str) -> list[tuple[int, int]]:
    return list(enumerate(_aligned(part, original, target)))


def _sequence(part: TextPart, original: str, target: str, concept: str) -> list[tuple[int, int]]:
    n_o, n_t = len(part.token_ids(original)), len(part.token_ids(target))
    padding = [(i, min(part.length - 1, i - n_o + n_t)) for i in range(n_o, part.length)]
    return _all(part, original, target, concept) + padding


_RULES: dict[str, PartRule] = {
    "cover": _cover,
    "last": _last,
    "concept": _concept,
    "all": _all,
    "sequence": _sequence,
}


def _differing(part: TextPart, original: str, target: str) -> list[int]:
    """Positions of ``original`` that the diff against ``target`` does not keep as equal."""
    matcher = difflib.SequenceMatcher(
        a=part.token_ids(original), b=part.token_ids(target), autojunk=False
    )
    return [
        i for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal" for i in range(i1, i2)
    ]


def found_pairs(
    family: type[ModelFamily], pipe: DiffusionPipeline, original: str, target: str, rule: TokenRule
) -> list[tuple[int, int]]:
    """Position pairs (in the whole sequence) of a found prompt ``original``, which need not
    name the concept, and its ``target``: under ``cover``/``concept`` the positions where it
    differs from the target (``cover``: and its last token), aligned as :func:`align` aligns;
    under the other rules those of :func:`edit_pairs`."""
    if rule not in ("cover", "concept"):
        return edit_pairs(family, pipe, original, target, rule, "")
    found = []
    for part in family.text_parts(pipe):
        mapping = _aligned(part, original, target)
        pairs = {i: mapping[i] for i in _differing(part, original, target)}
        if rule == "cover":
            pairs.update(_last(part, original, target, ""))
        found.append((part, sorted(pairs.items())))
    return _in_sequence(found)


def part_pairs(
    family: type[ModelFamily],
    pipe: DiffusionPipeline,
    original: str,
    target: str,
    rule: TokenRule,
    concept: str,
) -> list[tuple[TextPart, list[tuple[int, int]]]]:
    """Per part of the text sequence, the position pairs (in original, in target; counted
    within the part) whose states form the edit's columns; ``last`` reads the first part only.

    Raises:
        ModelLayoutError: under ``concept``, a part lacks the concept.
    """
    parts = family.text_parts(pipe)
    if rule == "last":
        parts = parts[:1]
    return [(part, _RULES[rule](part, original, target, concept)) for part in parts]


def edit_pairs(
    family: type[ModelFamily],
    pipe: DiffusionPipeline,
    original: str,
    target: str,
    rule: TokenRule,
    concept: str,
) -> list[tuple[int, int]]:
    """Position pairs (in original, in target; in the whole sequence) whose states form the
    edit's columns."""
    return _in_sequence(part_pairs(family, pipe, original, target, rule, concept))


def _in_sequence(found: list[tuple[TextPart, list[tuple[int, int]]]]) -> list[tuple[int, int]]:
    return [(part.start + i, part.start + j) for part, pairs in found for i, j in pairs]


class PartPositions(TypedDict):
    """One text part's positions in an edit prompt (counted within the part), and its last
    token before end-of-text where that is among them."""

    encoder: str
    positions: list[int]
    last: NotRequired[int]


class PromptRows(TypedDict):
    """The provenance of one edit prompt's columns."""

    prompt: str
    parts: list[PartPositions]


def _rows(prompt: str, found: list[tuple[TextPart, list[tuple[int, int]]]]) -> PromptRows:
    """The provenance of one edit prompt's columns: per part, its positions (counted within
    the part) and which of them is the last token before end-of-text."""
    parts: list[PartPositions] = []
    for part, pairs in found:
        positions = [i for i, _ in pairs]
        entry: PartPositions = {"encoder": part.name, "positions": positions}
        last = part.last_token(prompt)
        if last in positions:
            entry["last"] = last
        parts.append(entry)
    return {"prompt": prompt, "parts": parts}


def preserve_positions(
    family: type[ModelFamily], pipe: DiffusionPipeline, prompt: str, rule: TokenRule
) -> list[int]:
    """Positions of a preserve prompt whose states the edit keeps: its last token under the
    ``last`` rule (the reference implementation's), otherwise every position the sites read.

    Padding is read too where the family does not mask it, and CLIP's padding states carry the
    whole prompt: with only the words kept, the toy stripes erasure at every site kept 94% of
    its preserve prompts' images (8 seeds; a checker background lost), with every position
    100%."""
    if rule == "last":
        return [family.last_token_position(pipe, prompt)]
    if family.attention_mask(pipe, [prompt]) is not None:
        return family.content_positions(pipe, prompt)
    return list(range(family.max_length(pipe)))


@dataclass
class EditPrompts:
    """The edit's prompts and the token positions whose states form X, Y and P (the extra
    rows' prompts follow the recipe's in ``originals`` and ``targets``)."""

    originals: list[str]
    targets: list[str]  # one per original
    pairs: list[tuple[int, int, int]]  # (prompt, position in original, position in target)
    preserve: list[str]
    preserve_at: list[tuple[int, int]]  # (prompt, position)
    #: per recipe prompt, the positions of each part it contributed (:func:`_rows`)
    rows: list[PromptRows]
    #: continuous rows solved after the prompts' columns (:mod:`locopack.state_rows`)
    states: StateRows | None = None


def edit_prompts(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    extra: Sequence[tuple[str, str]] = (),
) -> EditPrompts:
    """Every edit's prompts and targets, the ``extra`` rows (``(prompt, target)`` pairs, see
    :func:`found_pairs`), the preserve prompts, and the token pairs of ``edit.tokens``."""
    rule = recipe.edit.tokens
    originals, targets, pairs, rows = [], [], [], []
    preserve = list(recipe.preserve)
    for edit in recipe.edits:
        for original, target in zip(edit.originals(), edit.targets_expanded(), strict=True):
            index = len(originals)
            originals.append(original)
            targets.append(target)
            found = part_pairs(family, pipe, original, target, rule, edit.label)
            pairs += [(index, i, j) for i, j in _in_sequence(found)]
            rows.append(_rows(original, found))
        preserve += list(edit.preserve)
    for original, target in extra:
        index = len(originals)
        originals.append(original)
        targets.append(target)
        pairs += [(index, i, j) for i, j in found_pairs(family, pipe, original, target, rule)]
    preserve = list(dict.fromkeys(preserve + neighbours(recipe)))
    preserve_at = [
        (k, pos)
        for k, prompt in enumerate(preserve)
        for pos in preserve_positions(family, pipe, prompt, rule)
    ]
    return EditPrompts(originals, targets, pairs, preserve, preserve_at, rows)
