"""How text reaches a family's sites: one object per kind of text site, which the family
hands out (:attr:`~locopack.models.ModelFamily.text_sites`), as a diffusers model hands out
its attention processors.

Three kinds exist:

- :data:`CROSS_ATTENTION` (SD-1.x/2.x, SD-XL, IF, PixArt, SANA): every site reads the encoded
  prompt, the same states at each site (up to a per-site normalization);
- :data:`JOINT_ATTENTION` (SD3, FLUX.1, FLUX.2, Chroma): every block reads a text stream of its
  own, updated block by block (:mod:`locopack.models.joint_attention`); what a site reads
  depends on the latent, the timestep and the blocks before it;
- :data:`TEXT_REFINER` (Z-Image, Lumina-2): the sites are the blocks of a text-only refiner
  before one shared stream (:mod:`locopack.models.text_refiner`); what they read depends on the
  prompt alone.

The object says how its sites are described and what a caller may do with them.  The work that
differs at the sites is chosen by the object's type where that work lives, each package
registering one function per kind (``functools.singledispatch``): the swap of the text states
(:func:`locopack.hooks.joint.swap_windows`), the collection of the sites' inputs and the solve
(:mod:`locopack.edit.activations`, :mod:`locopack.edit.editor`).  The work cannot be methods of
these objects: the families hold them, and ``hooks/`` and ``edit/`` import the families, so
such methods would close an import circle.  What the prompts are encoded into for the sites is
the family's own (:meth:`~locopack.models.ModelFamily.given_text`).

A new kind of text site is one more :class:`TextSites` here and one registered function in each
of those places; a family of an existing kind only sets its ``text_sites``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextSites:
    """A kind of text-conditioning site (see the module docstring).

    Attributes:
        name: the kind in words, for messages.
        described_as: what the model card and ``locopack layers`` call the sites.
        reads_encoded_text: whether every site reads one encoded text (the prompt's states as
            the family encodes them), so that states found for the sites stand in for a
            prompt's at every site.
        swaps_pooled: whether a LocoGen window may swap the pooled text vector alone (a
            reference line; the vector is no site).
    """

    name: str
    described_as: str
    reads_encoded_text: bool = False
    swaps_pooled: bool = False


class CrossAttention(TextSites):
    """Sites whose key/value read the encoded prompt (cross-attention)."""


class JointAttention(TextSites):
    """Sites that read their block's own text stream (joint attention)."""


class TextRefiner(TextSites):
    """Sites that are the blocks of a text-only refiner before one shared stream."""


#: the one object of each kind
CROSS_ATTENTION = CrossAttention("cross-attention", "cross-attention layers", True)
JOINT_ATTENTION = JointAttention(
    "joint attention",
    "joint-attention blocks (their text key/value projections)",
    swaps_pooled=True,
)
TEXT_REFINER = TextRefiner(
    "text refiner", "text refiner blocks (their key/value projections, which read text only)"
)
