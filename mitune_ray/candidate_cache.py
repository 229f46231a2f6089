"""Candidates computed once, selected many times: `generate.candidate_cache`.

Runs that sample the same base model with the same settings and seeds draw the same candidates
(every candidate's noise comes from its seed, `sampling.candidate_seed`), and differ only in how
they select among them: the arms of a ShapesWorld series (`mitune shapes bench --replicates`),
or a run tried again with another `generate.select_by`, `keep` or `filter_drop`. With a cache folder
set, a generation stores each prompt's finished latents with their MI, and a later one whose
batch of prompts is all there reads them back instead of sampling and scoring: in a series the
arms after the first skip round 1's sampling and the base model's evaluation images.

What a cached value depends on is its key: the model (path, family, precision, resolution, the
device type), every generation and MI setting except how candidates are selected and where the
work runs, the round and the candidate indices. Batches are read whole or not at all, so a hit
gives back the very values of a batch of the same prompts (the same bits where the batch was the
same, as between the arms of a series). Candidates of a model with adapters fused are never
cached: an adapter folder's name does not say what it holds. Each entry is one safetensors file
per prompt, named by the key and the prompt's id, written whole (`Store.write_bytes`).
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from mitune_ray.config import GenerateSection, MISection
from mitune_ray.storage import Store

# GenerateSection fields that do not change a prompt's candidates or their MI: how they are
# selected, judged and shown, and where the work runs.
NOT_IN_KEY = ("keep", "select_by", "filter_drop", "pool_metric", "gallery_prompts", "actors",
              "gpus_per_actor", "cpus_per_actor", "candidate_cache")


def cache_key(*, model: dict, gen: GenerateSection, mi: MISection, device: str) -> str:
    """The first 16 hex digits of the sha256 of everything a prompt's candidates depend on
    (besides the prompt, round and candidate indices, which name the entry)."""
    settings = {k: v for k, v in gen.model_dump(mode="json").items() if k not in NOT_IN_KEY}
    identity = {"model": model, "generate": settings, "mi": mi.model_dump(mode="json"),
                "device": device}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class CandidateCache:
    """One key's entries under a store: `<key>/round-<r>/<prompt id>.safetensors`, each holding
    `columns` (the finished candidates' positions among the indices asked for), `latents`
    (their final latents), `mi` and `stderr` (every asked-for candidate's, NaN where pruned)."""

    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key
        self.hits = self.misses = 0  # batches

    def _rel(self, prompt_id: str, round_index: int, indices: list[int]) -> str:
        # The candidate indices are part of the name: a batch that asks for other ones misses.
        asked = hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:8]
        return f"{self.key}/round-{round_index:03d}/{prompt_id}-{asked}.safetensors"

    def load(self, prompt_ids: list[str], round_index: int, indices: list[int], device
             ) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor, torch.Tensor] | None:
        """(finals, mi, stderr) as `CandidateSampler.generate` computes them for these prompts,
        or None unless every prompt is cached."""
        rels = [self._rel(pid, round_index, indices) for pid in prompt_ids]
        if not all(self.store.exists(rel) for rel in rels):
            self.misses += 1
            return None
        finals: dict[tuple[int, int], torch.Tensor] = {}
        mi = torch.full((len(prompt_ids), len(indices)), float("nan"))
        se = torch.full_like(mi, float("nan"))
        for p, rel in enumerate(rels):
            entry = load_tensors(self.store.read_bytes(rel))
            for col, latent in zip(entry["columns"].tolist(), entry["latents"]):
                finals[(p, col)] = latent.to(device)
            mi[p], se[p] = entry["mi"], entry["stderr"]
        self.hits += 1
        return finals, mi, se

    def save(self, prompt_ids: list[str], round_index: int, indices: list[int],
             finals: dict[tuple[int, int], torch.Tensor], mi: torch.Tensor,
             se: torch.Tensor) -> None:
        for p, pid in enumerate(prompt_ids):
            cols = sorted(c for q, c in finals if q == p)
            # One copy to the host per prompt, not one per candidate.
            latents = (torch.stack([finals[(p, c)] for c in cols]).detach().cpu() if cols
                       else torch.zeros(0))
            entry = {"columns": torch.tensor(cols, dtype=torch.int64),
                     "latents": latents.contiguous(),
                     "mi": mi[p].detach().cpu().contiguous(),
                     "stderr": se[p].detach().cpu().contiguous()}
            self.store.write_bytes(self._rel(pid, round_index, indices), save_tensors(entry))
