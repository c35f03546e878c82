"""Every kind of image a user folder really holds decodes to the picture a viewer shows,
and every bad one is named and skipped (or refused) instead of crashing or hanging."""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_core.data.images import ImageRecord, load_image, read_caption, scan_images
from dreambooth_core.errors import FormatError, UserError


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def solid(path: Path, size=(300, 300), color=(200, 30, 30), **save) -> Path:
    Image.new("RGB", size, color).save(path, **save)
    return path


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def about(self, name: str) -> list[str]:
        return [m for m in self if name in m]


# ---- load_image: modes and orientation ----------------------------------------------------

def test_exif_orientation_6_is_rotated_upright(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)   # 40 wide, 20 high
    stored[:, :20] = (255, 0, 0)                # left half red
    stored[:, 20:] = (0, 0, 255)                # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6                             # rotate 90° clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)

    out = pixels(load_image(tmp_path / "rot.png"))
    assert out.shape == (40, 20, 3)              # now 20 wide, 40 high
    assert (out[:20] == (255, 0, 0)).all()       # what was on the left is now on top
    assert (out[20:] == (0, 0, 255)).all()


def test_transparent_half_becomes_white_not_black(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (0, 128, 0, 255)               # opaque green left half
    rgba[:, 5:] = (0, 0, 0, 0)                   # fully transparent right half (black underneath)
    rgba[0, 0] = (0, 0, 0, 128)                  # half-transparent black → mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")

    out = pixels(load_image(tmp_path / "t.png"))
    assert (out[1:, :5] == (0, 128, 0)).all()
    assert (out[:, 5:] == 255).all()
    assert np.abs(out[0, 0] - 127).max() <= 1


def test_la_and_palette_transparency_composite_on_white(tmp_path):
    la = Image.new("LA", (4, 4), (10, 0))        # dark but fully transparent
    la.putpixel((0, 0), (10, 255))
    la.save(tmp_path / "la.png")
    out = pixels(load_image(tmp_path / "la.png"))
    assert (out[0, 0] == 10).all() and (out[1:] == 255).all()

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal.putpixel((3, 3), 1)
    pal.save(tmp_path / "p.png", transparency=0)  # palette index 0 (black) is transparent
    out = pixels(load_image(tmp_path / "p.png"))
    assert (out[3, 3] == (200, 0, 0)).all()
    assert (out[0, 0] == 255).all()

    pal.save(tmp_path / "p.gif", transparency=0)
    out = pixels(load_image(tmp_path / "p.gif"))
    assert (out[3, 3] == (200, 0, 0)).all() and (out[0, 0] == 255).all()


def test_opaque_palette_gray_and_one_bit(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.bmp")
    assert (pixels(load_image(tmp_path / "p.bmp")) == (10, 20, 30)).all()

    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert (pixels(load_image(tmp_path / "l.png")) == 77).all()

    bw = Image.new("1", (4, 4), 0)
    bw.putpixel((1, 1), 1)
    bw.save(tmp_path / "b.png")
    out = pixels(load_image(tmp_path / "b.png"))
    assert (out[1, 1] == 255).all() and (out[0, 0] == 0).all()


def test_cmyk_pure_cyan(tmp_path):
    for name in ("c.jpg", "c.tiff"):
        Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / name)
        out = pixels(load_image(tmp_path / name))
        assert np.abs(out - (0, 255, 255)).max() <= 3, name


def test_16_bit_gradient_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (4, 1))).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")

    out = pixels(load_image(tmp_path / "g16.png"))[0, :, 0]
    assert out[0] == 0 and out[-1] == 255
    assert (np.diff(out) >= 0).all()
    assert np.abs(out - np.arange(256)).max() <= 1      # scaled, not clipped at 255


def test_32_bit_integer_and_float_images(tmp_path):
    ramp16 = np.linspace(0, 65535, 100).astype(np.int32).reshape(10, 10)
    Image.fromarray(ramp16).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    out = pixels(load_image(tmp_path / "i32.tif"))[..., 0].ravel()
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) >= 0).all()

    ramp8 = np.arange(100, dtype=np.int32).reshape(10, 10) * 2
    Image.fromarray(ramp8).save(tmp_path / "i8.tif")
    assert (pixels(load_image(tmp_path / "i8.tif"))[..., 0] == ramp8).all()

    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    assert np.abs(pixels(load_image(tmp_path / "f.tif")) - 128).max() <= 1


def test_webp_and_gif_first_frame(tmp_path):
    solid(tmp_path / "a.webp", (16, 16), (0, 200, 0), lossless=True)
    assert (pixels(load_image(tmp_path / "a.webp")) == (0, 200, 0)).all()

    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    out = pixels(load_image(tmp_path / "anim.gif"))
    assert np.abs(out - (255, 0, 0)).max() <= 2


# ---- load_image: bad files -----------------------------------------------------------------

def test_non_image_and_truncated_files_raise_format_error_naming_the_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(FormatError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg")

    solid(tmp_path / "full.png", (64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:60])
    with pytest.raises(FormatError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_eps_content_behind_an_image_suffix_is_not_handed_to_ghostscript(tmp_path):
    (tmp_path / "x.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(FormatError, match="x.png: not a readable image"):
        load_image(tmp_path / "x.png")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height (a decompression bomb's header) with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_crafted_huge_png_is_refused_fast_even_when_the_host_disabled_the_guard(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    for max_pixels in (Image.MAX_IMAGE_PIXELS, None):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_pixels)
        start = time.monotonic()
        with pytest.raises(FormatError, match="bomb.png: too large to decode safely"):
            load_image(tmp_path / "bomb.png")
        assert time.monotonic() - start < 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_between_limit_and_twice_the_limit_is_refused_not_just_warned(tmp_path, monkeypatch):
    solid(tmp_path / "warn_range.png", (40, 40))   # 1600 px: Pillow only *warns* above 1000
    solid(tmp_path / "error_range.png", (50, 50))  # 2500 px: Pillow raises above 2000
    solid(tmp_path / "fine.png", (30, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("warn_range.png", "error_range.png"):
        with pytest.raises(FormatError, match=f"{name}: too large"):
            load_image(tmp_path / name)
    assert load_image(tmp_path / "fine.png").size == (30, 30)

    warned = Warnings()
    records = scan_images(tmp_path, warned, min_size=8)
    assert [r.path.name for r in records] == ["fine.png"]
    assert len(warned.about("warn_range.png")) == 1 and len(warned.about("error_range.png")) == 1


# ---- scan_images -------------------------------------------------------------------------

def test_scan_sorts_skips_and_warns(tmp_path):
    solid(tmp_path / "b.JPG", color=(1, 2, 3))
    solid(tmp_path / "a.png", color=(4, 5, 6))
    solid(tmp_path / "C.webp", color=(7, 8, 9))
    solid(tmp_path / "tiny.png", (100, 120), color=(9, 9, 9))
    solid(tmp_path / "copy.png", color=(4, 5, 6))                  # same pixels as a.png
    (tmp_path / "fake.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "readme.md").write_text("not an image, not an image suffix")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "sub").mkdir()

    warned = Warnings()
    records = scan_images(tmp_path, warned)
    assert [r.path.name for r in records] == ["a.png", "b.JPG", "C.webp", "copy.png", "tiny.png"]
    assert all(isinstance(r, ImageRecord) and r.path.parent == tmp_path for r in records)
    assert len(warned.about("fake.png")) == 1 and "skipping" in warned.about("fake.png")[0]
    assert len(warned.about("tiny.png")) == 1 and "100x120" in warned.about("tiny.png")[0]
    assert any("copy.png" in m and "a.png" in m for m in warned)
    assert not warned.about("readme") and not warned.about("._a")
    assert len(warned) == 3

    assert len(scan_images(tmp_path, Warnings(), min_size=64)) == 5
    quiet = Warnings()
    scan_images(tmp_path, quiet, min_size=64)
    assert not quiet.about("tiny.png")


def test_scan_refuses_missing_file_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_images(tmp_path / "nope")
    solid(tmp_path / "one.png")
    with pytest.raises(UserError, match="is a file, not a folder"):
        scan_images(tmp_path / "one.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="folder is empty"):
        scan_images(empty)

    (empty / "photo.heic").write_bytes(b"...")
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"found only notes\.txt, photo\.heic; add png"):
        scan_images(empty)

    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    warned = Warnings()
    with pytest.raises(UserError, match=r"1 image file\(s\) could not be read \(broken\.jpg\)"):
        scan_images(empty, warned)
    assert warned.about("broken.jpg")


# ---- captions ------------------------------------------------------------------------------

def test_captions_encodings_and_fallbacks(tmp_path):
    names = ["utf8", "bom", "cp1252", "latin1", "utf16", "blank", "cap", "none"]
    for i, name in enumerate(names):
        solid(tmp_path / f"{name}.png", color=(i, 0, 0))
    (tmp_path / "utf8.txt").write_text("  a photo of zwx dog, café \n", encoding="utf-8")
    (tmp_path / "bom.txt").write_bytes("\ufeffzwx dog on grass".encode("utf-8"))
    (tmp_path / "cp1252.txt").write_bytes("caf\u00e9 \u201cquoted\u201d".encode("cp1252"))
    (tmp_path / "latin1.txt").write_bytes(b"x\x81y \xe9")          # 0x81 is undefined in cp1252
    (tmp_path / "utf16.txt").write_text("zwx \u00fcber", encoding="utf-16")
    (tmp_path / "blank.txt").write_text(" \n\t ")
    (tmp_path / "cap.caption").write_text("from a .caption file")

    warned = Warnings()
    captions = {r.path.stem: r.caption for r in scan_images(tmp_path, warned)}
    assert captions == {
        "utf8": "a photo of zwx dog, café",
        "bom": "zwx dog on grass",
        "cp1252": "café “quoted”",
        "latin1": "x\x81y é",
        "utf16": "zwx über",
        "blank": None,
        "cap": "from a .caption file",
        "none": None,
    }
    assert len(warned.about("cp1252.txt")) == 1 and "cp1252" in warned.about("cp1252.txt")[0]
    assert len(warned.about("latin1.txt")) == 1 and "latin-1" in warned.about("latin1.txt")[0]
    assert len(warned) == 2


def test_txt_caption_wins_over_caption_file(tmp_path):
    solid(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("from txt")
    (tmp_path / "x.caption").write_text("from caption")
    assert read_caption(tmp_path / "x.png") == "from txt"
