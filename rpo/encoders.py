"""Image and text encoders for rewards and metrics, behind one small interface.

Backends: transformers (CLIP, ALIGN, ViT/DINO) and open_clip. Real models load by hub id
or local directory, safetensors only, never remote code; registered names (rpo.registry:
tiny-clip, world-clip, ...) become their directories. Every embedding comes back L2-normalised.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from rpo.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from rpo.registry import model_path
from rpo.xla import batches


def features(out) -> torch.Tensor:
    # transformers 5 returns an output object from get_*_features; version 4 a tensor
    return out if torch.is_tensor(out) else out.pooler_output


class Encoder:
    """embed_images(list[PIL]) -> (n, d); embed_texts(list[str]) -> (n, d) for dual encoders."""

    batch_size = 32

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self._embed(self._images, images)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self._embed(self._texts, texts)

    def _embed(self, encode, items) -> torch.Tensor:
        # each chunk to the host whole, then trimmed: on XLA (fixed chunk sizes) one graph per tower and call size
        chunks = [encode(chunk).float().cpu()[:n] for chunk, n in batches(list(items), self.batch_size, self.device)]
        return F.normalize(torch.cat(chunks), dim=-1)

    def _images(self, images):
        raise NotImplementedError

    def _texts(self, texts):
        raise NotImplementedError(f"{type(self).__name__} has no text tower")


class HFDualEncoder(Encoder):
    """CLIP or ALIGN through transformers' AutoModel (get_image_features / get_text_features)."""

    def __init__(self, name: str, device: str = "cpu", dtype=torch.float32):
        from transformers import AutoModel, AutoProcessor

        path = model_path(name)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=dtype).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def _images(self, images):
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return features(self.model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def _texts(self, texts):
        tok = self.processor(text=texts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self._max_length())
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return features(self.model.get_text_features(**tok))

    def _max_length(self):
        cfg = self.model.config.text_config
        return getattr(cfg, "max_position_embeddings", 64)


class HFImageEncoder(Encoder):
    """A ViT such as DINO (facebook/dino-vits16): the CLS token of the last hidden state."""

    def __init__(self, name: str, device: str = "cpu", dtype=torch.float32, transform=None):
        from transformers import AutoImageProcessor, AutoModel

        path = model_path(name)
        # the CLS token is the embedding: no pooler head (DINO checkpoints ship none)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=dtype, add_pooling_layer=False)
        self.model = self.model.to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.transform = transform  # optional torchvision transform replacing the processor
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def _images(self, images):
        if self.transform is not None:
            pixels = torch.stack([self.transform(im) for im in images])
        else:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        return out.last_hidden_state[:, 0]


class OpenClipEncoder(Encoder):
    """open_clip models: 'hf-hub:org/repo', 'local-dir:/path', 'ViT-B-32/laion2b_s34b_b79k', or a tiny name."""

    def __init__(self, name: str, device: str = "cpu", dtype=torch.float32):
        import open_clip

        local = model_path(name)
        spec = f"local-dir:{local}" if Path(local).is_dir() else name
        model_name, pretrained = (spec.split("/", 1) if "/" in spec and ":" not in spec else (spec, None))
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model = self.model.to(device, dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def _images(self, images):
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def _texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def dual_encoder(backend: str, name: str, device: str = "cpu", dtype=torch.float32) -> Encoder:
    if backend == "transformers":
        return HFDualEncoder(name, device, dtype)
    if backend == "open_clip":
        return OpenClipEncoder(name, device, dtype)
    raise ValueError(f"unknown encoder backend {backend!r} (transformers or open_clip)")


def dino_original_transform(resolution: int = 224):
    """The DINO paper's evaluation transform: short side 256 bicubic, centre crop 224, ImageNet mean/std.

    For a model of another input size the same ratio (256/224) is kept.
    """
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(round(resolution * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(resolution),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
