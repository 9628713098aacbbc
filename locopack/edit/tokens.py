"""Which token states form the edit's columns X (originals) and Y (targets).

Three rules (recipe ``edit.tokens``):

- ``last``: the last token before end-of-text of the original and of the target prompt (what
  the reference implementation of LocoEdit does).
- ``concept``: the concept's tokens in the original prompt, each paired with its aligned
  token in the target prompt.
- ``all``: every non-padding token of the original, each paired with its aligned token.
- ``sequence``: every position the denoiser attends to, padding included: the non-padding
  tokens as under ``all``, then padding position ``n_o + k`` paired with ``n_t + k``.  With
  CLIP's causal text encoder the padding states carry the whole prompt, so an edit that must
  also change them (a fact update, whose prompt has no single concept token) needs this rule.

Preserve prompts (the recipe's, each edit's and ``edit.neighbours``) keep every position the
sites read, whatever the rule but ``last`` (:func:`preserve_positions`).

Alignment is a diff of the two token sequences (:func:`align`): tokens in common keep their
partner; a replaced span maps proportionally onto its replacement (``van gogh`` -> ``a
painter``); a deleted span maps to the target token just before the deletion.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from ..prompt_samples import neighbours

TokenRule = Literal["concept", "last", "all", "sequence"]


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


def edit_pairs(
    family: Any, pipe: Any, original: str, target: str, rule: TokenRule, concept: str
) -> list[tuple[int, int]]:
    """Position pairs (in original, in target) whose states form the edit's columns."""
    if rule == "last":
        return [
            (family.last_token_position(pipe, original), family.last_token_position(pipe, target))
        ]
    ids_o, ids_t = family.token_ids(pipe, original), family.token_ids(pipe, target)
    mapping = align(ids_o, ids_t)
    if rule == "all":
        return list(enumerate(mapping))
    if rule == "sequence":
        length = family.max_length(pipe)
        padding = [
            (i, min(length - 1, i - len(ids_o) + len(ids_t))) for i in range(len(ids_o), length)
        ]
        return list(enumerate(mapping)) + padding
    return [(i, mapping[i]) for i in family.concept_positions(pipe, original, concept)]


def preserve_positions(family: Any, pipe: Any, prompt: str, rule: TokenRule) -> list[int]:
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
    """The edit's prompts and the token positions whose states form X, Y and P."""

    originals: list[str]
    targets: list[str]  # one per original
    pairs: list[tuple[int, int, int]]  # (prompt, position in original, position in target)
    preserve: list[str]
    preserve_at: list[tuple[int, int]]  # (prompt, position)


def edit_prompts(pipe: Any, family: Any, recipe: Any) -> EditPrompts:
    """Every edit's prompts and targets, the preserve prompts, and the token pairs of
    ``edit.tokens``."""
    rule = recipe.edit.tokens
    originals, targets, pairs = [], [], []
    preserve = list(recipe.preserve)
    for edit in recipe.edits:
        for original, target in zip(edit.originals(), edit.targets_expanded(), strict=True):
            index = len(originals)
            originals.append(original)
            targets.append(target)
            found = edit_pairs(family, pipe, original, target, rule, edit.label)
            pairs += [(index, i, j) for i, j in found]
        preserve += list(edit.preserve)
    preserve = list(dict.fromkeys(preserve + neighbours(recipe)))
    preserve_at = [
        (k, pos)
        for k, prompt in enumerate(preserve)
        for pos in preserve_positions(family, pipe, prompt, rule)
    ]
    return EditPrompts(originals, targets, pairs, preserve, preserve_at)
