"""BLIP-VQA, computed as T2I-CompBench computes it.

T2I-CompBench (`BLIPvqa_eval/`, on Salesforce's BLIP `model_base_vqa_capfilt_large`) scores an
image for its prompt as follows, and so do we:
1. Noun phrases of the prompt (spaCy noun chunks minus 'top', 'the side', 'the left', 'the
   right'; see `nounphrases`), at most the first 8 (`--np_num 8`); a missing phrase counts 1.
2. One question per phrase: `pre_question(f"{phrase}?")` (lower-cased, `.!"()*#:;~` removed),
   tokenised with BERT's uncased vocabulary, truncated to 35 tokens, first token replaced by
   BLIP's `[ENC]`.
3. The image resized to 480 x 480 (bicubic), scaled to [0, 1], normalised with CLIP's mean/std.
4. The answer decoder gets `[DEC]` and one step; from its first-token logits,
   p = softmax[yes] / (softmax[yes] + softmax[no])  (`vqa_prob` in their `blip_vqa.py`).
5. The image's score is the product of p over the phrases.

The model is transformers' `BlipForQuestionAnswering`, loaded from a local folder that holds
`Salesforce/blip-vqa-base` saved with `save_pretrained` (config.json, model.safetensors, and the
tokenizer files). Differences from the reference, both small: the hub checkpoint's position
embeddings were converted at 384 px, so at 480 px they are interpolated (the reference's own
checkpoint was trained at 480); and the reference writes each p and the final score with 4
decimals, which `reference_rounding=True` reproduces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mitune_ray.errors import MituneError
from mitune_ray.metrics._weights import require_model_folder, resolve_device, torch_dtype
from mitune_ray.metrics.nounphrases import Backend, chunker_name, noun_phrases

IMAGE_SIZE = 480  # T2I-CompBench's configs/vqa.yaml
MAX_PHRASES = 8  # BLIP_vqa.py's --np_num default: later phrases are not asked
MAX_QUESTION_TOKENS = 35  # BLIP's question truncation (blip_vqa.py)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP normalises images with CLIP's statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOW_TO_FILL = (
    "save Salesforce/blip-vqa-base there once, on a machine with hub access: "
    "BlipForQuestionAnswering.from_pretrained(...).save_pretrained(folder) and "
    "BlipProcessor.from_pretrained(...).save_pretrained(folder)"
)


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question normalisation (`data/utils.py`): lower-case, drop `.!"()*#:;~`, truncate.

    Example:
        >>> pre_question("The red hat?")
        'the red hat?'
    """
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])


def t2i_compbench_questions(
    prompt: str, *, backend: Backend = "auto", max_phrases: int = MAX_PHRASES
) -> list[str]:
    """The questions T2I-CompBench asks BLIP about `prompt`, one per noun phrase.

    Example:
        >>> t2i_compbench_questions("A green bench and a blue bowl.", backend="rules")
        ['a green bench?', 'a blue bowl?']
    """
    return [pre_question(f"{p}?") for p in noun_phrases(prompt, backend=backend)[:max_phrases]]


def yes_probability(first_token_logits, *, yes_id: int, no_id: int):
    """p(yes) / (p(yes) + p(no)) from the answer decoder's first-token logits, row-wise.

    The softmax's normaliser cancels in the ratio, so this is sigmoid(logit_yes - logit_no):
    the same value as the reference's softmax ratio, without its 0/0 when both underflow.

    Args:
        first_token_logits: tensor [N, vocab].
        yes_id, no_id: token ids of "yes" and "no" (2748 and 2053 in BERT's uncased vocabulary).

    Example:
        >>> import torch
        >>> yes_probability(torch.tensor([[0.0, 2.0, 0.0]]), yes_id=1, no_id=2)
        tensor([0.8808])
    """
    import torch

    logits = first_token_logits.float()
    return torch.sigmoid(logits[:, yes_id] - logits[:, no_id])


def combine_phrase_probabilities(
    probabilities: Sequence[float], *, reference_rounding: bool = False
) -> float:
    """An image's BLIP-VQA score: the product over its phrases (1.0 when it has none).

    With `reference_rounding`, each p and the product are rounded to 4 decimals, as the reference
    does by writing them to JSON with '{:.4f}'.

    Example:
        >>> combine_phrase_probabilities([0.5, 0.8])
        0.4
    """
    if reference_rounding:
        return round(math.prod(round(float(p), 4) for p in probabilities), 4)
    return float(math.prod(float(p) for p in probabilities))


def blip_pixel_values(images: Sequence[Any], image_size: int = IMAGE_SIZE):
    """BLIP's test transform with PIL + numpy: bicubic resize to a square, [0, 1], CLIP mean/std.

    Equal to torchvision's `Resize((s, s), BICUBIC) -> ToTensor -> Normalize` on PIL images, which
    resizes with PIL itself. Returns a float32 tensor [N, 3, s, s].
    """
    import torch
    from PIL import Image

    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    arrays = []
    for image in images:
        resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append((np.asarray(resized, dtype=np.float32) / 255.0 - mean) / std)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@dataclass
class BlipVqaScorer:
    """BLIP-VQA over (image, prompt) pairs; build it with `BlipVqaScorer.from_folder`."""

    model: Any  # transformers BlipForQuestionAnswering, in eval mode
    tokenizer: Any  # its BERT tokenizer
    yes_id: int
    no_id: int
    enc_token_id: int | None  # replaces the question's first token ([CLS]); None keeps [CLS]
    device: str = "cpu"
    image_size: int = IMAGE_SIZE
    backend: Backend = "auto"
    reference_rounding: bool = False

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        image_size: int = IMAGE_SIZE,
        enc_token_id: int | None | str = "auto",
        backend: Backend = "auto",
        reference_rounding: bool = False,
    ) -> "BlipVqaScorer":
        """Load BLIP-VQA from a local folder (see the module docstring for its contents).

        Args:
            enc_token_id: "auto" takes `[ENC]` from the tokenizer when it has one, else
                `bos_token_id + 1` of the text config (BLIP appends [DEC], [ENC] to BERT's
                vocabulary: 30522, 30523); an int sets it; None keeps [CLS] (transformers' own
                usage).

        Example:
            >>> scorer = BlipVqaScorer.from_folder("/models/blip-vqa-base")  # doctest: +SKIP
            >>> scorer.score([image], ["a green bench and a blue bowl"])  # doctest: +SKIP
            array([0.731...])
        """
        from transformers import AutoTokenizer, BlipForQuestionAnswering

        path = require_model_folder(folder, metric="BLIP-VQA", how=HOW_TO_FILL)
        device = resolve_device(device)
        model = BlipForQuestionAnswering.from_pretrained(
            path, dtype=torch_dtype(dtype), use_safetensors=True
        ).to(device).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise MituneError(
                f"BLIP-VQA folder {path} has no usable tokenizer ({err}): {HOW_TO_FILL}"
            ) from None
        ids = {word: tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no")}
        for word, token_id in ids.items():
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise MituneError(
                    f"BLIP-VQA tokenizer in {path} has no token {word!r}: save the BERT "
                    "tokenizer of Salesforce/blip-vqa-base there"
                )
        if enc_token_id == "auto":
            enc = tokenizer.convert_tokens_to_ids("[ENC]")
            if enc is None or enc == tokenizer.unk_token_id:
                enc = model.config.text_config.bos_token_id + 1
            enc_token_id = enc
        vocab_size = model.config.text_config.vocab_size
        if enc_token_id is not None and not 0 <= int(enc_token_id) < vocab_size:
            raise MituneError(
                f"BLIP-VQA enc_token_id {enc_token_id} is outside the text vocabulary of {path} "
                f"(size {vocab_size}): pass enc_token_id=None to keep [CLS]"
            )
        return cls(
            model=model, tokenizer=tokenizer, yes_id=ids["yes"], no_id=ids["no"],
            enc_token_id=enc_token_id, device=device, image_size=image_size, backend=backend,
            reference_rounding=reference_rounding,
        )

    @property
    def info(self) -> dict[str, str]:
        """What besides the weights decides the scores: the noun-phrase chunker that picks the
        questions (`nounphrases.chunker_name`), recorded with the results."""
        return {"noun_phrase_chunker": chunker_name(self.backend)}

    def yes_probabilities(self, images: Sequence[Any], questions: Sequence[str]) -> np.ndarray:
        """p(yes)/(p(yes)+p(no)) for each (image, question) pair, in one batched forward."""
        if len(images) != len(questions):
            raise MituneError(
                f"BLIP-VQA got {len(images)} images for {len(questions)} questions: pass one "
                "question per image"
            )
        return self._answer(images, questions, list(range(len(questions))))

    def _answer(
        self, images: Sequence[Any], questions: Sequence[str], image_of_question: list[int]
    ) -> np.ndarray:
        """Yes-probabilities of `questions`, question q being about `images[image_of_question[q]]`.

        Each image goes through the vision tower once, however many questions it has. Questions
        are batched by token length, never padded: transformers 5's BLIP text decoder drops the
        cross-attention mask (`BlipTextAttention` does not pass `encoder_attention_mask` on), so
        a padded question would attend to its padding and change its answer.
        """
        import torch

        out = np.zeros(len(questions))
        if not questions:
            return out
        model = self.model
        dtype = next(model.parameters()).dtype
        pixels = blip_pixel_values(images, self.image_size).to(self.device, dtype)
        token_ids = self.tokenizer(
            list(questions), truncation=True, max_length=MAX_QUESTION_TOKENS
        ).input_ids
        by_length: dict[int, list[int]] = {}
        for q, ids in enumerate(token_ids):
            by_length.setdefault(len(ids), []).append(q)
        with torch.no_grad():
            image_embeds = model.vision_model(
                pixel_values=pixels,
                interpolate_pos_encoding=self.image_size != model.config.vision_config.image_size,
            ).last_hidden_state
            for group in by_length.values():
                input_ids = torch.tensor([token_ids[q] for q in group], device=self.device)
                if self.enc_token_id is not None:
                    input_ids[:, 0] = self.enc_token_id
                group_images = image_embeds[
                    torch.tensor([image_of_question[q] for q in group], device=self.device)
                ]
                question = model.text_encoder(
                    input_ids=input_ids, encoder_hidden_states=group_images
                ).last_hidden_state
                start = torch.full(
                    (len(group), 1), model.decoder_start_token_id, device=self.device
                )  # [DEC]
                logits = model.text_decoder(
                    input_ids=start, encoder_hidden_states=question
                ).logits[:, 0, :]
                p = yes_probability(logits, yes_id=self.yes_id, no_id=self.no_id)
                out[group] = p.cpu().double().numpy()
        return out

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        """The BLIP-VQA score of each image for its prompt (float64 [N], in [0, 1])."""
        if len(images) != len(prompts):
            raise MituneError(
                f"BLIP-VQA got {len(images)} images for {len(prompts)} prompts: pass one "
                "prompt per image"
            )
        per_image = [t2i_compbench_questions(p, backend=self.backend) for p in prompts]
        image_of_question = [i for i, qs in enumerate(per_image) for _ in qs]
        questions = [q for qs in per_image for q in qs]
        probabilities = iter(self._answer(images, questions, image_of_question))
        return np.asarray([
            combine_phrase_probabilities(
                [next(probabilities) for _ in qs], reference_rounding=self.reference_rounding
            )
            for qs in per_image
        ])
