"""The reward model at work: one encoder, reference embeddings computed once, ALIGN-I / ALIGN-T per image."""

from __future__ import annotations

import torch

from rpo.encoders import dual_encoder
from rpo.prompts import strip_token
from rpo.reward import align_i, align_t


class RewardModel:
    @classmethod
    def of(cls, reward, references, token: str, device="cpu") -> "RewardModel":
        """The reward model of the config's `reward` section."""
        return cls(reward.backend, reward.model, references, token, device, reward.batch_size)

    def __init__(self, backend: str, name: str, references, token: str, device="cpu", batch_size: int = 32):
        self.encoder = dual_encoder(backend, name, device)
        self.encoder.batch_size = batch_size
        self.token = token
        self.ref_emb = self.encoder.embed_images(references)
        self._text_cache: dict[str, torch.Tensor] = {}

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Prompts as the diffusion model saw them; V is removed here, and each text is encoded once."""
        todo = sorted({p for p in prompts if p not in self._text_cache})
        if todo:
            for p, e in zip(todo, self.encoder.embed_texts([strip_token(p, self.token) for p in todo])):
                self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ALIGN-I, ALIGN-T) of generated images, each against its own prompt."""
        emb = self.encoder.embed_images(images)
        return align_i(emb, self.ref_emb), align_t(emb, self.text_embeddings(prompts))

    def score_references(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every reference against every prompt: ALIGN-I leave-one-out (n_ref,), ALIGN-T (n_ref, n_prompts)."""
        n = self.ref_emb.shape[0]
        ai = align_i(self.ref_emb, self.ref_emb, leave_out=torch.arange(n))
        text = self.text_embeddings(prompts)
        return ai, align_t(self.ref_emb[:, None, :], text[None, :, :])
