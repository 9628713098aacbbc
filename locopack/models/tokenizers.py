"""Tokenizers for tiny twins, built offline in memory.

Real CLIP and T5 vocabularies cannot be downloaded here, so twins carry a small self-built
vocabulary: every word of :data:`TWIN_WORDS` is one token, and any other word falls back to
its characters (CLIP: byte-level BPE; T5: SentencePiece-style unigram), so every prompt can be
tokenized.  Both save with ``save_pretrained`` and load back by class name.
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

#: Words that tokenize to a single token in twin tokenizers (common prompt vocabulary).
TWIN_WORDS = (
    "a an the of in on with and by at photo painting picture image drawing style art artist "
    "cat dog car house tree man woman person face flower bird city street sky river mountain "
    "van gogh monet picasso starry night snoopy mickey mouse red green blue purple orange yellow "
    "circle square triangle stripes dots checker plain emblem flag president united states of "
    "america emblem veridia zorbania joe biden donald trump"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (the GPT-2 scheme)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _learn_merges(words: list[str], end: str = "</w>") -> list[tuple[str, str]]:
    """Byte-pair merges learned on ``words`` until each word is one symbol.

    Learning them (most frequent pair first, ties broken by the pair itself) rather than
    writing each word's chain by hand keeps the merges consistent: applying them in rank order,
    as a BPE tokenizer does, rebuilds every word.  ``end`` marks a word's last symbol (CLIP's
    ``</w>``).
    """
    pieces = [list(word[:-1]) + [word[-1] + end] for word in words]
    merges = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for symbols in pieces:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def tiny_clip_tokenizer(words: tuple[str, ...] | list[str] = TWIN_WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary is the byte alphabet plus ``words`` as whole tokens."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges = _learn_merges(list(dict.fromkeys(w.lower() for w in words)))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_t5_tokenizer(words: tuple[str, ...] | list[str] = TWIN_WORDS) -> T5Tokenizer:
    """A T5 unigram tokenizer with ``words`` as whole pieces and letters/digits as fallback."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in dict.fromkeys(words)]
    pieces += [(ch, -5.0) for ch in string.ascii_letters + string.digits + ".,'-!?"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)


#: a chat template of the Qwen form (``<|im_start|>role\ncontent<|im_end|>\n``), as the
#: pipelines that prompt a chat model (Z-Image) apply it
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


#: a chat template of the Mistral form (``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``)
#: whose message contents are lists of text parts, as FLUX.2's pipeline writes them
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% set text = message['content'] | map(attribute='text') "
    "| join('') %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% else %}[INST]{{ text }}[/INST]{% endif %}{% endfor %}"
)
MISTRAL_MARKERS = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]")


def tiny_chat_tokenizer(
    words: tuple[str, ...] | list[str] = TWIN_WORDS,
    template: str = CHAT_TEMPLATE,
    markers: tuple[str, ...] = ("<|im_start|>", "<|im_end|>"),
):
    """A word-level tokenizer with ``words`` (and ``user``/``assistant``) as tokens, unknown
    words as ``<unk>`` (case-insensitive), the chat ``template`` and its ``markers`` as
    special tokens (Qwen's by default; :data:`MISTRAL_TEMPLATE` and :data:`MISTRAL_MARKERS`
    for FLUX.2); no start or end token is added, as Qwen's tokenizers add none."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<unk>", *markers]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in [*dict.fromkeys(words), "user", "assistant"]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(markers),
        chat_template=template,
        model_max_length=512,
    )


def tiny_gemma_tokenizer(words: tuple[str, ...] | list[str] = TWIN_WORDS) -> GemmaTokenizer:
    """A Gemma BPE tokenizer (spaces as ``▁``, a start token, no end token) with ``words`` as
    whole tokens, with and without their leading space, and characters as fallback."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = list(string.ascii_letters + string.digits + ".,'-!?") + ["▁"]
    forms = list(dict.fromkeys(f for w in words for f in (w, "▁" + w)))
    merges = _learn_merges(forms, end="")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return GemmaTokenizer(
        vocab=vocab, merges=merges, model_max_length=300, add_bos_token=True, padding_side="right"
    )
