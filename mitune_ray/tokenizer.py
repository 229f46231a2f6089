"""The real CLIP BPE tokenizer, built from the vocabulary file bundled with the package.

No hub access: the vocabulary (`assets/bpe_simple_vocab_16e6.txt.gz`, MIT, from OpenAI CLIP via
open_clip) is converted in memory into transformers' `CLIPTokenizer`, which gives the real ids
("a photo of a cat" -> 49406 320 1125 539 320 2368 49407).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 48894  # lines 1..48894 of the file are the merges CLIP uses (49,408 tokens in all)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token -> id) and BPE merges, in CLIP's order."""
    raw = resources.files("mitune_ray.assets").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A transformers `CLIPTokenizer` with the real CLIP vocabulary.

    Example:
        >>> clip_tokenizer()("a photo of a cat").input_ids
        [49406, 320, 1125, 539, 320, 2368, 49407]
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length,
        pad_token=pad_token,
    )
