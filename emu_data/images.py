"""The one boundary where untrusted image bytes meet Pillow.

Every decode path (LAION, MMC4, storyboard mosaics, validate, the feature encoder) opens
images here. A decoder fed hostile bytes can raise almost anything: OSError and
SyntaxError are Pillow's usual "not an image", but its plugins also raise
NotImplementedError (a DDS file with pixel-format flags 0), TypeError, IndexError,
ZeroDivisionError, struct.error, MemoryError... Listing them is a losing game, so inside
`opened` every exception becomes ImageRejected for that one image, with a status reason:
`decompression_bomb` (above Pillow's MAX_IMAGE_PIXELS or the caller's limit, refused from
the header before a pixel is decoded) or `decode_error`. ImageRejected raised by the caller
inside the block (its own filters) passes through unchanged.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator

from PIL import Image

STORED_FORMATS = ("JPEG", "PNG", "WEBP")   # what the interleaved record accepts as is


class ImageRejected(ValueError):
    """One image that will not be used, with its status-table reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def refuse_bomb(size: tuple[int, int], max_pixels: int | None = None) -> None:
    """ImageRejected(decompression_bomb) above max_pixels or Pillow's MAX_IMAGE_PIXELS. Pillow
    itself refuses only above twice its limit and merely warns in between: refused here too."""
    width, height = size
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow and width * height > pillow:
        raise ImageRejected("decompression_bomb", f"decompression bomb: {width}x{height} pixels "
                                                  f"exceed Pillow's limit of {pillow}")
    if max_pixels and width * height > max_pixels:
        raise ImageRejected("decompression_bomb", f"decompression bomb: {width}x{height} "
                                                  f"exceeds max_image_pixels {max_pixels}")


@contextlib.contextmanager
def rejecting() -> Iterator[None]:
    """Whatever the block raises becomes ImageRejected (ImageRejected itself passes through)."""
    try:
        yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under -W error
        raise ImageRejected("decompression_bomb", f"decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001 - the family is "anything a decoder raises"; see the docstring
        raise ImageRejected("decode_error", f"does not decode: {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def opened(data: bytes, *, max_pixels: int | None = None, load: bool = True) -> Iterator[Image.Image]:
    """The image in `data`, size-checked from its header and (load=True) fully decoded. The
    whole block is inside the boundary: converting, cropping or encoding it there is covered
    too. load=False leaves decoding to `load_checked` (a caller's filters can run first)."""
    with rejecting():
        with Image.open(io.BytesIO(data)) as image:
            refuse_bomb(image.size, max_pixels)
            if load:
                load_checked(image, max_pixels)
            yield image


def load_checked(image: Image.Image, max_pixels: int | None = None) -> None:
    """Decode the pixels; some formats learn their real size only while loading: check again."""
    with rejecting():
        image.load()
        refuse_bomb(image.size, max_pixels)
