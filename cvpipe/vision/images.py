"""The one image decoder: untrusted bytes -> the H x W x 3 BGR uint8 array every consumer sees.

- JPEG goes through libjpeg-turbo (simplejpeg, strict: a corrupt stream is an error, not a grey half-image);
  a JPEG it refuses (CMYK, rare markers) and every other format (PNG, BMP, WebP, TIFF, ...) go through
  Pillow. Both give the same pixels for the same baseline JPEG up to libjpeg-turbo's IDCT, and data_load,
  training, evaluation, export and the service all call this function, so they see identical pixels.
- EXIF orientation is applied: the array is the image as a viewer displays it, and boxes refer to that
  grid. data_load records displayed sizes, so annotations made on a rotated photo match its pixels.
- The header is read first: a decompression bomb or an image over `max_pixels` is refused before one pixel
  is decoded. Any failure, whatever the library raises, becomes ImageDecodeError (a client error).
- Grayscale, RGBA, palette, CMYK and 16-bit images become 8-bit BGR (alpha dropped, 16-bit scaled down).
- No exception but ImageDecodeError leaves this module, whatever the bytes (a hypothesis fuzz test over every
  format Pillow reads holds it to that). Pillow's decompression-bomb *warning* is not turned into an error
  through the `warnings` filters: those are process-global and not thread-safe, and the service decodes on
  several threads at once. The pixel limit is checked here, on the header, instead.
- Peak memory of one decode is about 7 bytes per pixel (Pillow's 4-byte pixels + the array), see
  `decode_cost_bytes`; a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (`min_size`) to cost far less.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7700 x 5200; far above any camera frame a detector needs
EXIF_ORIENTATION = 0x0112
PEAK_BYTES_PER_PIXEL = 7  # Pillow's decoded image (4 B/px for RGB) + the 3 B/px array made from it

# The bomb warning only ever reaches the user as a log line; the limit that matters is max_pixels, below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", module=r"PIL\.")  # "Truncated File Read", "Corrupt EXIF": per hostile file


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image (empty, not an image, truncated, too large)."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header announces more pixels than allowed (a decompression bomb, or just too big)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # Pillow's name: JPEG, PNG, ...
    width: int  # as displayed (EXIF orientation applied)
    height: int
    orientation: int = 1  # EXIF orientation tag, 1 = none

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(data: bytes) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty image: no bytes")
    try:
        return Image.open(io.BytesIO(bytes(data)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image too large: {e}") from None
    except Exception as e:  # Pillow's plugins raise many types on hostile headers (ValueError, struct.error,
        # NotImplementedError, OverflowError, MemoryError, ...): all of them mean "not a usable image"
        raise ImageDecodeError(f"not an image: {len(data)} bytes in no format Pillow reads "
                               f"(starts with {bytes(data[:8])!r}): {type(e).__name__}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def _header_of(im: Image.Image, max_pixels: int) -> ImageHeader:
    try:
        w, h = (int(v) for v in im.size)
        fmt = str(im.format)
    except Exception as e:  # a plugin that opened but holds nonsense
        raise ImageDecodeError(f"unusable image header: {type(e).__name__}") from None
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:  # checked on the header, before decoding a single pixel
        raise ImageTooLarge(f"image too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
    o = _orientation(im)
    return ImageHeader(fmt, *((h, w) if o >= 5 else (w, h)), orientation=o)


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Format and displayed size from the header alone; ImageDecodeError if unusable (ImageTooLarge over
    max_pixels). Reads no pixel data: cheap enough to run before deciding whether to decode at all."""
    with _opened(data) as im:
        return _header_of(im, max_pixels)


def decode_cost_bytes(header: ImageHeader, min_size: tuple[int, int] | None = None) -> int:
    """Peak bytes decode_image(..., min_size) needs for an image with this header (the budget unit)."""
    return PEAK_BYTES_PER_PIXEL * _reduced_pixels(header, min_size)


@contextmanager
def _opened(data: bytes):
    im = _open(data)
    try:
        yield im
    finally:
        try:
            im.close()
        except Exception:  # closing a broken plugin's file must not turn a 4xx into a 500
            pass


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixel grid -> displayed grid, for EXIF orientation 1..8."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.swapaxes(0, 1), 6: lambda x: x.swapaxes(0, 1)[:, ::-1],
           7: lambda x: x.swapaxes(0, 1)[::-1, ::-1], 8: lambda x: x.swapaxes(0, 1)[::-1]}
    op = ops.get(orientation)
    return a if op is None else np.ascontiguousarray(op(a))


def _pillow_to_bgr(im: Image.Image) -> np.ndarray:
    """Loaded Pillow image -> BGR uint8; closes `im` as soon as its pixels are copied out (peak memory)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grayscale -> 8-bit
        a = np.asarray(im)
        a = (a.astype(np.uint32) >> 8).astype(np.uint8) if a.max(initial=0) > 255 else a.clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im)).clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode in ("L", "1"):
        return np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)
    if im.mode != "RGB":  # RGBA, LA, P, PA, CMYK, YCbCr, RGB;16 ...
        converted = im.convert("RGB")
        im.close()
        im = converted
    rgb = np.asarray(im)
    im.close()  # Pillow's 4-byte pixels are freed before the BGR copy is made
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _reduced_pixels(header: ImageHeader, min_size: tuple[int, int] | None) -> int:
    """Pixels decode_image will produce: a JPEG with min_size decodes at the smallest 1/2^k (k <= 3) scale
    that keeps it at least min_size (h, w); everything else at full size."""
    if min_size is None or header.format != "JPEG":
        return header.pixels
    factor = _jpeg_scale_factor(header, min_size)
    return -(-header.width // factor) * -(-header.height // factor)


def _jpeg_scale_factor(header: ImageHeader, min_size: tuple[int, int]) -> int:
    min_h, min_w = min_size
    factor = 1
    while factor < 8 and header.height // (factor * 2) >= min_h and header.width // (factor * 2) >= min_w:
        factor *= 2
    return factor


def _decode_jpeg_turbo(data: bytes, header: ImageHeader, min_size: tuple[int, int] | None) -> np.ndarray | None:
    import simplejpeg

    factor = 1 if min_size is None else _jpeg_scale_factor(header, min_size)
    # simplejpeg scales only towards min_height/min_width (min_factor alone is ignored): ask for exactly the
    # 1/factor size (rounded up, as libjpeg does) that decode_cost_bytes charges for, in stored orientation
    stored_h, stored_w = (header.width, header.height) if header.orientation >= 5 else (header.height, header.width)
    try:
        return simplejpeg.decode_jpeg(bytes(data), colorspace="BGR", strict=True, fastdct=False, fastupsample=False,
                                      min_height=-(-stored_h // factor), min_width=-(-stored_w // factor))
    except Exception:  # corrupt, truncated, or a JPEG flavour turbo's fast path refuses: Pillow decides
        return None


def _decode_pillow(im: Image.Image, header: ImageHeader, min_size: tuple[int, int] | None) -> np.ndarray:
    try:
        if min_size is not None and header.format == "JPEG":
            factor = _jpeg_scale_factor(header, min_size)
            if factor > 1:  # libjpeg's scale-on-decode, as simplejpeg's min_factor
                im.draft(im.mode, (-(-im.size[0] // factor), -(-im.size[1] // factor)))
        im.load()
        return _pillow_to_bgr(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image too large: {e}") from None
    except Exception as e:  # truncated / corrupt data, unsupported modes, plugin bugs
        raise ImageDecodeError(f"corrupt or truncated {header.format} image "
                               f"({header.width}x{header.height}): {type(e).__name__}: {e}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Image file bytes -> H x W x 3 BGR uint8 as displayed (EXIF orientation applied); ImageDecodeError
    (ImageTooLarge for oversized headers) for anything unusable.

    min_size=(h, w): a JPEG at least twice that size in both directions is decoded at a reduced scale
    (1/2, 1/4 or 1/8, libjpeg's DCT scaling) that stays >= min_size; the pixels then differ from a full
    decode followed by a resize. Other formats ignore it. None (the default) decodes at full size."""
    with _opened(data) as im:
        header = _header_of(im, max_pixels)
        pixels = _decode_jpeg_turbo(data, header, min_size) if header.format == "JPEG" else None
        if pixels is None:
            pixels = _decode_pillow(im, header, min_size)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:  # paranoia: a plugin's odd mode
        raise ImageDecodeError(f"{header.format} image decoded to an unusable array {pixels.shape} {pixels.dtype}")
    return np.ascontiguousarray(apply_orientation(pixels, header.orientation))


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: tuple[int, int] | None = None) -> np.ndarray:
    """decode_image of a file's bytes."""
    return decode_image(Path(path).read_bytes(), max_pixels, min_size)
