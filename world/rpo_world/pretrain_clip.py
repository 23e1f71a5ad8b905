"""The world's CLIP: a small dual encoder trained contrastively on (scene, caption) pairs.

Saved in transformers' CLIP format with its processor, so the product loads it as the
reward model and the CLIP metric like any hub CLIP; its text tower is where the diffusion
model's text encoder starts (rpo_world/pretrain_unet.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rpo.encoders import features
from rpo_world.data import batch
from rpo_world.grammar import COLOURS, CONTEXTS, PATTERNS, SHAPES
from rpo_world.canvas import SIZE
from rpo_world.training import cpu_autocast, train_loop

MAX_TOKENS = 32  # the longest caption of the world is 20 tokens; 77 would only slow attention
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          vocab_size=49408, max_position_embeddings=MAX_TOKENS, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, attn_implementation="eager")


def build_model(seed: int):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=SIZE, patch_size=4)
    config = CLIPConfig(text_config=text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=128)
    config._attn_implementation = "eager"  # SDPA's backward is slow on the CPU
    torch.manual_seed(seed)
    return CLIPModel(config)


def tokenizer():
    """The real CLIP BPE tokenizer, built offline as the embedded tiny models build it."""
    import tempfile

    from rpo.tiny import clip_tokenizer

    tok, src = clip_tokenizer(Path(tempfile.mkdtemp()))
    tok.model_max_length = MAX_TOKENS
    return tok, src.parent


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 32, 32, 3) -> normalised (n, 3, 32, 32), as CLIPImageProcessor does at 32 px."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def tokens(tok, texts: list[str]) -> dict:
    out = tok(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def _embed(model, images, texts, tok):
    img = features(model.get_image_features(pixel_values=pixels(images)))
    txt = features(model.get_text_features(**tokens(tok, texts)))
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


@torch.no_grad()
def zero_shot(model, tok, images: np.ndarray, scenes) -> dict:
    """Accuracy of picking each attribute's true value among its alternatives, by text similarity."""
    img = F.normalize(features(model.get_image_features(pixel_values=pixels(images))), dim=-1)
    out = {}
    for attr, values, template in (("shape", SHAPES, "a {} toy"), ("colour", COLOURS, "a {} toy"),
                                    ("pattern", PATTERNS, "a {} toy"), ("context", list(CONTEXTS), "a toy {}")):
        texts = [template.format(CONTEXTS[v] if attr == "context" else v) for v in values]
        txt = F.normalize(features(model.get_text_features(**tokens(tok, texts))), dim=-1)
        pred = (img @ txt.T).argmax(1).numpy()
        truth = np.array([values.index(getattr(s, attr)) for s in scenes])
        out[f"zero_shot_{attr}"] = float((pred == truth).mean())
    return out


def pretrain(cfg: dict, seed: int, work: Path, out: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    model = build_model(seed)
    tok, src = tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.1, betas=(0.9, 0.98))
    eval_images, eval_scenes, _ = batch(seed + 1, 0, 512, "encoder")

    def loss_fn(step):
        images, _, captions = batch(seed, step, cfg["batch_size"], "encoder")
        with cpu_autocast():
            img, txt = _embed(model, images, captions, tok)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        # identical captions in a batch are not negatives of each other
        same = torch.tensor([[a == b for b in captions] for a in captions])
        target = same.float() / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target.T)) / 2
        return loss, {"logit_scale": float(model.logit_scale.detach().exp())}

    train_loop(model, opt, loss_fn, cfg=cfg, warmup=100, work=work,
               on_checkpoint=lambda s: zero_shot(model, tok, eval_images, eval_scenes))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}), tokenizer=tok)
    shutil.rmtree(out, ignore_errors=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    shutil.rmtree(src)
