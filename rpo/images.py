"""Reading user photos: any mode PIL reads becomes an upright RGB image, or a clear error."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_SIZE = 1024  # px, short side of imported photos: training crops to 512 at most, metrics see 224
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".mpo", ".gif"}


class ImageError(ValueError):
    """An input image is unreadable or too small; the message names the file."""


def load_rgb(path: Path, min_size: int | None = None) -> Image.Image:
    """Open `path` as RGB: EXIF rotation applied, first frame of MPO/GIF, alpha on white, CMYK converted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.seek(0)  # MPO (multi-picture JPEG) and animated files: the first picture
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    im = _to_rgb(im)
    if min_size is not None and min(im.size) < min_size:
        raise ImageError(f"{path}: {im.size[0]}x{im.size[1]} px is smaller than the model's resolution {min_size} px")
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit before RGB
    return im.convert("RGB")


def center_square(im: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` and crop the centre: the training view of a reference photo."""
    return ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)


def center_crop_top_left(size_wh: tuple[int, int], target: int) -> tuple[int, int]:
    """(top, left) of `center_square`'s crop in the photo resized to a short side of `target`: SDXL's crop time ids."""
    width, height = size_wh
    scale = target / min(width, height)
    return max(0, round((round(height * scale) - target) / 2)), max(0, round((round(width * scale) - target) / 2))


def limit_short_side(im: Image.Image, max_size: int | None) -> Image.Image:
    """Scale down (never up) so the short side is at most `max_size`: 2048 px originals need not be kept."""
    if max_size is None or min(im.size) <= max_size:
        return im
    scale = max_size / min(im.size)
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
