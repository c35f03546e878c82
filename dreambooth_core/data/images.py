"""Finding, validating and decoding the user's training images and their captions.

Users drop whatever their phone, browser or editor produced into a folder: rotated
JPEGs, transparent PNGs, CMYK scans, 16-bit TIFFs, a stray `.txt` in Windows' code page,
a file that only claims to be an image, or a crafted one that expands to gigabytes.
`scan_images` decodes each file once up front so a bad file is named and skipped before
any model loads, and `load_image` turns every one of them into the RGB picture a person
would see in an image viewer.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import FormatError, UserError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CAPTION_SUFFIXES = (".txt", ".caption")
# The decoders allowed to touch a user file: only the formats above. This keeps Pillow
# from handing a renamed file to exotic plugins such as EPS, which shells out to Ghostscript.
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
# Used when a host has switched Pillow's own guard off (Image.MAX_IMAGE_PIXELS = None):
# Pillow's long-standing default, ~179 megapixels, far beyond any training photo.
FALLBACK_MAX_PIXELS = 178_956_970
DEFAULT_MIN_SIZE = 256
WHITE = (255, 255, 255)

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    path: Path
    caption: str | None = None
    mask: Path | None = None      # where the subject is (white) and is not (black)


MASK_SUFFIX = ".mask"   # photo.png's mask is photo.mask.png, or masks/photo.png
MASK_FOLDER = "masks"


def find_mask(image_path: Path) -> Path | None:
    for candidate in (image_path.with_name(image_path.stem + MASK_SUFFIX + ".png"),
                      image_path.parent / MASK_FOLDER / (image_path.stem + ".png")):
        if candidate.is_file():
            return candidate
    return None


def scan_images(
    folder: str | Path,
    warn: Callable[[str], None] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    caption_extension: str = "",
) -> list[ImageRecord]:
    """Every usable image in `folder` (not recursive), sorted by name, with its caption.

    Each image is fully decoded once; unreadable ones are skipped and `warn` is told
    which file and why. Images whose short side is below `min_size` and exact duplicate
    pictures are kept but warned about. Raises UserError when nothing usable is left.
    """
    warn = log.warning if warn is None else warn
    root = Path(folder)
    if not root.exists():
        raise UserError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder: give the folder that holds your images")

    # Hidden files are editor/OS debris (macOS '._x.jpg', our own '.x.tmp'), never photos.
    try:
        entries = sorted((p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")),
                         key=lambda p: (p.name.casefold(), p.name))
    except OSError as exc:
        raise UserError(f"cannot read the image folder {root}: {exc.strerror or exc}") from None
    candidates = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(MASK_SUFFIX)]
    records: list[ImageRecord] = []
    skipped: list[str] = []
    seen: dict[str, Path] = {}
    for path in candidates:
        try:
            image = load_image(path)
        except FormatError as exc:
            warn(f"skipping {exc}")
            skipped.append(path.name)
            continue
        if min(image.size) < min_size:
            warn(f"{path.name} is only {image.width}x{image.height} px (under {min_size} on the short side): "
                 "it will be upscaled and look soft; use larger photos if you have them")
        digest = hashlib.sha1(repr(image.size).encode() + image.tobytes()).hexdigest()
        if digest in seen:
            warn(f"{path.name} is the same picture as {seen[digest].name}: it will count twice")
        else:
            seen[digest] = path
        records.append(ImageRecord(path, read_caption(path, warn, caption_extension), find_mask(path)))

    if not records:
        raise UserError(_nothing_usable(root, entries, candidates, skipped))
    return records


def _nothing_usable(root: Path, entries: list[Path], candidates: list[Path], skipped: list[str]) -> str:
    kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
    if skipped:
        return (f"no usable image in {root}: {len(skipped)} image file(s) could not be read "
                f"({_names(skipped)}); re-export them as PNG or JPEG")
    if entries:
        others = [p.name for p in entries if p not in candidates]
        return f"no image in {root}: found only {_names(others)}; add {kinds} files"
    return f"no image in {root}: the folder is empty; add your photos ({kinds})"


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_caption(image_path: Path, warn: Callable[[str], None] | None = None, extension: str = "") -> str | None:
    """The caption in `<stem>.txt` (or `<stem>.caption`, or `<stem><extension>` when one is
    given) beside the image; None if absent or empty.

    UTF-8 (with or without BOM) and UTF-16 with BOM are read as such; anything else is
    taken as Windows-1252 (Notepad's old default), or Latin-1 as a last resort, and `warn`
    is told so the user can check the accents.
    """
    warn = log.warning if warn is None else warn
    for suffix in (extension,) if extension else CAPTION_SUFFIXES:
        path = image_path.with_suffix(suffix)
        if path.is_file():
            try:
                data = path.read_bytes()
            except OSError as exc:
                warn(f"cannot read the caption {path.name} ({exc.strerror or exc}); using the instance prompt")
                return None
            return decode_text(data, path, warn).strip() or None
    return None


def decode_text(data: bytes, path: Path, warn: Callable[[str], None]) -> str:
    declared = ["utf-16"] if data.startswith((b"\xff\xfe", b"\xfe\xff")) else []
    for encoding in declared + ["utf-8-sig"]:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    try:
        text, encoding = data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; latin-1 decodes anything
        text, encoding = data.decode("latin-1"), "latin-1"
    warn(f"{path.name} is not UTF-8; read it as {encoding}: check its accents, or save it as UTF-8")
    return text


def load_image(path: str | Path) -> "PILImage.Image":
    """Decode `path` into an upright 8-bit RGB image, or raise FormatError naming the file.

    Upright: the EXIF orientation tag is applied, as viewers do. Transparent pixels
    become white (not the black that a plain RGB conversion leaves), and 16/32-bit
    images are scaled to 8 bits rather than clipped.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS or FALLBACK_MAX_PIXELS
    Image.init()
    formats = [f for f in PIL_FORMATS if f in Image.OPEN]  # a Pillow built without WebP lacks one
    try:
        with Image.open(path, formats=formats) as image:
            width, height = image.size
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and checks nothing
            # when a host has set it to None: refuse here, before anything is decoded.
            if width * height > limit:
                raise Image.DecompressionBombError(f"{width}x{height} px exceeds the limit of {limit:,} pixels")
            image.seek(0)  # first frame of a GIF / animated WebP
            image.load()
            return to_rgb(_exif_transpose(ImageOps, image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning: under -W error
        raise FormatError(
            f"{path.name}: too large to decode safely, a possible decompression bomb ({exc}); "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except Image.UnidentifiedImageError:
        raise FormatError(f"{path.name}: not a readable image (its contents are not {', '.join(formats)} data)") from None
    except FileNotFoundError:
        raise FormatError(f"{path.name}: file not found ({path})") from None
    except MemoryError:
        raise FormatError(f"{path.name}: not enough memory to decode this image; downscale it") from None
    except Exception as exc:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError, struct.error, ...
        raise FormatError(f"{path.name}: corrupt or truncated image ({type(exc).__name__}: {exc}); re-export it") from None


def _exif_transpose(image_ops, image: "PILImage.Image") -> "PILImage.Image":
    """Apply the EXIF orientation (always returning a new image, detached from the file);
    a broken EXIF block leaves the picture as stored."""
    try:
        return image_ops.exif_transpose(image)
    except Exception:
        return image.copy()


def to_rgb(image: "PILImage.Image") -> "PILImage.Image":
    """Convert any Pillow mode to 8-bit RGB the way an image viewer would show it."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(image).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV


def _high_depth_to_l(image: "PILImage.Image") -> "PILImage.Image":
    """16-bit and 32-bit grayscale → 8-bit, scaled over the format's range (Pillow's own convert clips at 255)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        full = 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1.0:
        full = 1.0
    elif low >= 0 and high <= 255:   # 32-bit container holding 8-bit data
        full = 255.0
    elif low >= 0 and high <= 65535:  # 32-bit container holding 16-bit data (older Pillow opens 16-bit PNGs as "I")
        full = 65535.0
    else:                             # genuinely wide range: stretch what is there
        values = values - low
        full = max(high - low, 1.0)
    scaled = np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)
