"""Property test of the one image decoder: for ANY bytes, decode_image / read_header return a BGR uint8 image
or raise ImageDecodeError (a 4xx in the service), never anything else (a 500).

Seeds are small valid images in every format Pillow can write here (the decoder reads all of them), plus
hand-made headers of the kinds that escaped before (PNG of 90-144 Mpx, PPM with a malformed header, DDS);
hypothesis mutates them (bit flips, overwritten header fields with huge or negative values, truncation,
insertion, splicing two formats). Default run ~2,000 inputs in a few seconds; `-m slow` runs 40,000.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cvpipe.vision import ImageDecodeError, decode_image, read_header

MAX_PIXELS = 2_000_000  # keeps each decode cheap; the limit logic itself is the same at any value
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(w: int, h: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR announces w x h RGB, with the given IDAT payload (default: none)."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _save(im: Image.Image, fmt: str, **kw) -> bytes | None:
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **kw)
    except Exception:  # a writer this Pillow build lacks (e.g. no libwebp / openjpeg)
        return None
    return buf.getvalue()


def seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "RGB")
    seeds: dict[str, bytes] = {}
    writers = {
        "JPEG": [rgb], "PNG": [rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("1")],
        "BMP": [rgb, rgb.convert("P")], "GIF": [rgb], "TIFF": [rgb, rgb.convert("CMYK"), rgb.convert("I;16")],
        "WEBP": [rgb], "PPM": [rgb, rgb.convert("L"), rgb.convert("1")], "ICO": [rgb], "TGA": [rgb],
        "PCX": [rgb], "SGI": [rgb], "IM": [rgb], "JPEG2000": [rgb], "DDS": [rgb.convert("RGBA")], "QOI": [rgb],
        "SPIDER": [rgb.convert("F")], "MSP": [rgb.convert("1")], "XBM": [rgb.convert("1")],
        "PALM": [rgb.convert("1")], "DIB": [rgb], "BLP": [rgb.convert("P")], "ICNS": [rgb.resize((16, 16))],
        "PDF": [], "EPS": [],
    }
    for fmt, images in writers.items():
        for i, im in enumerate(images):
            data = _save(im, fmt)
            if data:
                seeds[f"{fmt.lower()}_{im.mode}_{i}"] = data
    seeds["png_90mpx_header"] = png_header(9500, 9500)
    seeds["png_144mpx_header"] = png_header(12000, 12000)
    seeds["png_deflate_bomb"] = png_header(2000, 2000, zlib.compress(b"\0" * (2001 * 2000 * 3)))
    seeds["ppm_bad_header"] = b"P6\n16 -12\n255\n" + b"\0" * 100
    seeds["ppm_huge_maxval"] = b"P6\n4 4\n99999999999\n" + b"\0" * 100
    seeds["pgm_plain"] = b"P2\n2 2\n255\n0 1\n2 3\n"
    seeds["exif_jpeg"] = _exif_jpeg(rgb)
    return seeds


def _exif_jpeg(im: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im, "JPEG", exif=exif.tobytes()) or b""


SEEDS = seed_images()
SEED_NAMES = sorted(SEEDS)


def test_seeds_cover_the_formats_the_decoder_reads():
    formats = {name.split("_")[0] for name in SEEDS}
    assert {"jpeg", "png", "bmp", "gif", "tiff", "webp", "ppm", "ico", "tga", "dds"} <= formats, formats
    for name in ("jpeg_RGB_0", "png_RGB_0", "tiff_CMYK_1", "dds_RGBA_0", "ppm_L_1"):
        out = decode_image(SEEDS[name])
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name


@pytest.mark.parametrize("name", ["png_90mpx_header", "png_144mpx_header", "ppm_bad_header", "ppm_huge_maxval"])
def test_known_escapes_are_decode_errors(name):
    with pytest.raises(ImageDecodeError):
        decode_image(SEEDS[name])


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(SEED_NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite_int", "truncate", "insert", "delete", "splice", "byte"]))
        if not data:
            data = bytearray(b"\0")
        pos = draw(st.integers(0, min(len(data) - 1, 256) if draw(st.booleans()) else len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "overwrite_int":  # header fields: sizes, offsets, counts, with extreme values
            value = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 9500, 65500]))
            fmt = draw(st.sampled_from([">I", "<I", ">H", "<H"]))
            packed = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            data[pos:pos + len(packed)] = packed
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
            data[pos:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


def check_contract(data: bytes) -> None:
    try:
        read_header(data, MAX_PIXELS)
    except ImageDecodeError:
        pass
    try:
        out = decode_image(data, MAX_PIXELS)
    except ImageDecodeError as e:
        assert str(e), "an error must say what is wrong"
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert 0 < out.shape[0] * out.shape[1] <= MAX_PIXELS


FUZZ = settings(max_examples=2000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated())
def test_mutated_images_decode_or_raise_image_decode_error(data):
    check_contract(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_image_decode_error(data):
    check_contract(data)


@pytest.mark.slow
@settings(max_examples=40000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_images_big_run(data):
    check_contract(data)
