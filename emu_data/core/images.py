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

from emu_data.core.errors import ItemFailed

STORED_FORMATS = ("JPEG", "PNG", "WEBP")   # what the interleaved record accepts as is


class ImageRejected(ItemFailed):
    """One image that will not be used, with its status-table reason."""


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The most pixels an image (or a video frame, which becomes one) may have: the smaller of
    max_pixels and Pillow's MAX_IMAGE_PIXELS, read at each call (so a changed Pillow limit
    counts); None (or 0) stands for no limit of that side; None when neither sets one."""
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n]
    return min(limits) if limits else None


def check_pixels(width: int, height: int, max_pixels: int | None = None, *,
                 option: str = "max_image_pixels") -> None:
    """The bomb check: ImageRejected(decompression_bomb) when width x height is above
    pixel_limit(max_pixels). Pillow itself refuses only above twice its limit and merely warns
    in between: refused here too. The message names the limit passed, Pillow's first; `option`
    is the caller's name for max_pixels."""
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow and width * height > pillow:
        raise ImageRejected("decompression_bomb", f"decompression bomb: {width}x{height} pixels "
                                                  f"exceed Pillow's limit of {pillow}")
    if max_pixels and width * height > max_pixels:
        raise ImageRejected("decompression_bomb", f"decompression bomb: {width}x{height} "
                                                  f"exceeds {option} {max_pixels}")


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
            check_pixels(*image.size, max_pixels)
            if load:
                load_checked(image, max_pixels)
            yield image


def load_checked(image: Image.Image, max_pixels: int | None = None) -> None:
    """Decode the pixels; some formats learn their real size only while loading: check again."""
    with rejecting():
        image.load()
        check_pixels(*image.size, max_pixels)
