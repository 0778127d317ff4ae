import io

import cv2
import numpy as np
import pytest
from PIL import Image

from cvpipe.vision import ImageDecodeError, ImageTooLarge, decode_image


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def jpeg(h=48, w=64) -> bytes:
    rng = np.random.default_rng(0)
    ok, enc = cv2.imencode(".jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return enc.tobytes()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG signature + IHDR announcing w x h RGB, then an empty IDAT: no pixel data at all."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + idat


def test_jpeg_decodes_to_bgr_uint8():
    out = decode_image(jpeg())
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_rgb_png_channel_order_is_bgr():
    im = Image.new("RGB", (5, 4), (255, 0, 0))  # pure red
    out = decode_image(encode(im))
    assert out.shape == (4, 5, 3)
    assert out[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"this is not an image at all" * 20, "not an image"),
])
def test_bad_bytes_raise_clear_errors(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


def test_truncated_jpeg_is_an_error_not_a_grey_image():
    data = jpeg(240, 320)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused_from_the_header():
    with pytest.raises(ImageTooLarge, match="too large"):
        decode_image(png_header_only(60000, 60000))  # 3.6 G pixels announced, nothing decoded
    with pytest.raises(ImageTooLarge, match="48000000 pixels"):
        decode_image(png_header_only(8000, 6000))  # under Pillow's own bomb limit, over ours (40 M)
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg(48, 64), max_pixels=1000)


def test_grayscale_rgba_palette_and_16bit_become_8bit_bgr():
    gray = decode_image(encode(Image.new("L", (6, 3), 100)))
    assert gray.shape == (3, 6, 3) and gray.dtype == np.uint8 and (gray == 100).all()

    rgba = decode_image(encode(Image.new("RGBA", (6, 3), (10, 20, 30, 0))))
    assert rgba.shape == (3, 6, 3) and rgba[0, 0].tolist() == [30, 20, 10]

    pal = Image.new("P", (6, 3), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert decode_image(encode(pal))[0, 0].tolist() == [50, 100, 200]

    a16 = np.full((3, 6), 65535, np.uint16)
    a16[0, 0] = 256 * 40
    ok, enc = cv2.imencode(".png", a16)  # a real 16-bit grayscale PNG
    out = decode_image(enc.tobytes())
    assert out.dtype == np.uint8 and out.shape == (3, 6, 3)
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [40, 40, 40]


def test_non_bytes_input():
    with pytest.raises(ImageDecodeError):
        decode_image("x.jpg")  # a path is not image bytes
