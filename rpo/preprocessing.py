"""What an encoder does to an image before embedding it, in words, for the report.

DreamBench numbers move by several DINO points with the preprocessing (a Hugging Face
ViT processor squashes the photo to a square; DINO's own evaluation transform resizes the
short side and crops), so every result states it: read from the loaded processor or
torchvision transform itself, not from what the configuration was meant to do.
"""

from __future__ import annotations

from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO's and most ViTs' normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


def describe(encoder) -> str:
    """Resize, crop and normalisation of a transformers or open_clip encoder (rpo.encoders)."""
    transform = getattr(encoder, "transform", None) or getattr(encoder, "preprocess", None)
    if transform is not None:
        return describe_transform(transform)
    processor = encoder.processor
    return describe_processor(getattr(processor, "image_processor", processor))


def describe_processor(p) -> str:
    """A Hugging Face image processor (CLIPImageProcessor, ViTImageProcessor, ...)."""
    parts = []
    if getattr(p, "do_resize", False):
        short, h, w = (_field(p.size, k) for k in ("shortest_edge", "height", "width"))
        how = _resample(getattr(p, "resample", None))
        parts.append(f"resize short side to {short} ({how})" if short
                     else f"resize to {h}x{w} ({how}, aspect ratio not kept)")
    if getattr(p, "do_center_crop", False):
        parts.append(f"centre crop {_field(p.crop_size, 'height')}x{_field(p.crop_size, 'width')}")
    if getattr(p, "do_normalize", False):
        parts.append(f"normalise mean {_rounded(p.image_mean)} std {_rounded(p.image_std)}")
    return ", ".join(parts) + f" (Hugging Face {type(p).__name__})"


def describe_transform(transform) -> str:
    """A torchvision Compose (DINO's evaluation transform, open_clip's preprocess)."""
    from torchvision import transforms as T

    parts = []
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, T.Resize):
            size = t.size if isinstance(t.size, int) or len(t.size) != 1 else t.size[0]
            target = f"short side to {size}" if isinstance(size, int) else f"to {size[0]}x{size[1]}"
            parts.append(f"resize {target} ({t.interpolation.value})")
        elif isinstance(t, T.CenterCrop):
            parts.append(f"centre crop {t.size[0]}x{t.size[1]}")
        elif isinstance(t, T.Normalize):
            parts.append(f"normalise mean {_rounded(t.mean)} std {_rounded(t.std)}")
    return ", ".join(parts) + " (torchvision transform)"


def _field(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _resample(value) -> str:
    if isinstance(value, int):
        return Image.Resampling(value).name.lower()
    return str(getattr(value, "value", value)).lower()


def _rounded(values) -> tuple:
    return tuple(round(float(v), 3) for v in values)
