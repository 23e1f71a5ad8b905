"""A token of the subject's own in the diffusion model's tokenizer and text encoder, and its embedding on disk.

Textual Inversion and Custom Diffusion learn the unique token V as a new token: added to the tokenizer (so
"a sks dog" tokenizes to it, not to the vocabulary's "sks</w>"), with a new row of the text encoder's embedding
matrix that starts as the initializer word's embedding, as diffusers' scripts do. A checkpoint keeps that row in
diffusers' textual-inversion format (`learned_embeds.safetensors`, {token: (1, D)} in fp32), which
`pipe.load_textual_inversion(folder, weight_name="learned_embeds.safetensors")` reads too.
"""

from __future__ import annotations

import copy
from pathlib import Path

# torch is imported where it is used: select and the CLI read EMBEDS (through rpo.checkpoints) and must not pay
# torch's import (4 s) in a process that only copies files
EMBEDS = "learned_embeds.safetensors"


class TokenError(ValueError):
    """The token cannot be added (already a token) or the initializer word is empty."""


def add_token(tokenizer, text_encoder, token: str, initializer: str) -> int:
    """Add `token`, its embedding row a copy of `initializer`'s (the mean over its tokens if it has several); its id."""
    import torch

    init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if not init_ids:
        raise TokenError(f"initializer {initializer!r} has no tokens")
    if tokenizer.add_tokens(token) == 0:
        raise TokenError(f"{token!r} is already a token of the tokenizer: choose another unique_token")
    new_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[new_id] = weight[init_ids].float().mean(0).to(weight.dtype)
    return new_id


def added_ids(tokenizer) -> list[int]:
    """Ids of the tokens added beyond the base vocabulary: the learned ones."""
    return sorted(i for i in tokenizer.added_tokens_decoder if i >= tokenizer.vocab_size)


def learned(tokenizer, text_encoder) -> dict:
    """{token: its (1, D) embedding in fp32} for every added token."""
    import torch

    weight = text_encoder.get_input_embeddings().weight
    return {tokenizer.convert_ids_to_tokens(i): weight[i : i + 1].detach().to("cpu", torch.float32).clone()
            for i in added_ids(tokenizer)}


def save(tokenizer, text_encoder, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(learned(tokenizer, text_encoder), Path(folder) / EMBEDS, metadata={"format": "pt"})


def load(folder: Path, tokenizer, text_encoder):
    """(tokenizer, text_encoder) with the tokens of `folder`'s embeddings added: copies, the inputs untouched."""
    import torch
    from safetensors.torch import load_file

    tokenizer, text_encoder = copy.deepcopy(tokenizer), copy.deepcopy(text_encoder)
    weight_of = load_file(Path(folder) / EMBEDS)
    for token, embedding in weight_of.items():
        if tokenizer.add_tokens(token) == 0:
            raise TokenError(f"{Path(folder) / EMBEDS}: {token!r} is already a token of the base tokenizer")
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[tokenizer.convert_tokens_to_ids(token)] = embedding.reshape(-1).to(weight.device, weight.dtype)
    return tokenizer, text_encoder
