"""Compact images: uint8 pixels, PNG and JPEG bytes, checked before they are decoded.

A client sends the bytes it has; every device turns them into the teacher's
input itself (`normalise`: /255, then the plan's mean and std). Nothing a
peer sends is trusted: a PNG's or JPEG's header is parsed first and its
declared size must be the size the device expects (so a small file that
declares a huge image, a decompression bomb, is refused before any
allocation), the encoded size is bounded, and a corrupt or truncated file is
refused as such (`ImageCodecError`), never half-decoded.

Shapes: images are (B, C, H, W) uint8 on the host; C is 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import torch

from shoal.errors import DataError

FORMATS = ("png", "jpeg")                  # encoded; "uint8" pixels travel as a plain tensor
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}   # colour type -> channels once decoded (palette: RGB)
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...); not DHT (C4), JPG (C8), DAC (CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}   # markers without a length field (TEM, RSTn)
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


class ImageCodecError(DataError):
    """An encoded image is malformed, truncated, too large or not the size expected (-> INVALID_ARGUMENT)."""


def max_encoded_bytes(shape: Sequence[int]) -> int:
    """The largest encoded image accepted for a (C, H, W) input: twice its raw pixels plus 64 KiB
    (a PNG of noise is barely larger than its pixels; a JPEG at quality 100 can exceed them)."""
    c, h, w = shape
    return 2 * c * h * w + 64 * 1024


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(height, width) declared by a PNG's IHDR or a JPEG's start-of-frame, without decoding.

    Raises:
        ImageCodecError: not a PNG/JPEG, or no readable header.
    """
    if fmt == "png":
        if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
            raise ImageCodecError("not a PNG (no signature and IHDR header)")
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
            raise ImageCodecError(f"PNG with an invalid colour type {colour} or bit depth {depth}")
        if depth == 16:
            raise ImageCodecError("16-bit PNG; send 8-bit images")
        return height, width
    if fmt == "jpeg":
        if len(data) < 4 or data[:2] != b"\xff\xd8":
            raise ImageCodecError("not a JPEG (no start-of-image marker)")
        i = 2
        while i + 4 <= len(data):   # every step advances i by at least 2: bounded by the length
            if data[i] != 0xFF:
                raise ImageCodecError(f"corrupt JPEG: expected a marker at byte {i}")
            marker = data[i + 1]
            if marker == 0xFF:      # fill byte
                i += 1
                continue
            if marker in _STANDALONE:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if length < 2:
                raise ImageCodecError(f"corrupt JPEG: segment length {length} at byte {i}")
            if marker in _SOF:
                if i + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return height, width
            if marker == 0xDA:      # start of scan before any frame header
                break
            i += 2 + length
        raise ImageCodecError("truncated or corrupt JPEG: no frame header")
    raise ImageCodecError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")


def decode_image(data: bytes, fmt: str, shape: Sequence[int]) -> torch.Tensor:
    """One PNG/JPEG as (C, H, W) uint8, after checking its encoded and declared size against `shape`.

    Raises:
        ImageCodecError: too many bytes, another size than `shape`, corrupt or truncated data.
    """
    import io

    import numpy as np
    from PIL import Image

    c, h, w = shape
    if not data:
        raise ImageCodecError("empty image")
    limit = max_encoded_bytes(shape)
    if len(data) > limit:
        raise ImageCodecError(f"{len(data)} encoded bytes exceed the limit of {limit} for a {c}x{h}x{w} image")
    declared = header_size(data, fmt)
    if declared != (h, w):
        raise ImageCodecError(f"the {fmt.upper()} is {declared[0]}x{declared[1]}; this plan takes {h}x{w} images "
                              "(resize on the client)")
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as image:
            if image.size != (w, h):   # Pillow's own reading of the header must agree with ours
                raise ImageCodecError(f"the {fmt.upper()} header is inconsistent ({image.size[1]}x{image.size[0]})")
            pixels = np.asarray(image.convert("L" if c == 1 else "RGB"))   # decodes; truncation raises here
    except ImageCodecError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ImageCodecError(f"corrupt or truncated {fmt.upper()}: {reason}") from None
    out = torch.from_numpy(pixels.copy())
    return (out.unsqueeze(0) if c == 1 else out.permute(2, 0, 1)).contiguous()


def encode_image(image: torch.Tensor, fmt: str, quality: int = 90) -> bytes:
    """A (C, H, W) uint8 image as PNG or JPEG bytes (what a client would send)."""
    import io

    from PIL import Image

    if fmt not in FORMATS:
        raise ImageCodecError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    array = image.permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = io.BytesIO()
    picture.save(out, format=_PIL_FORMATS[fmt], **({"quality": quality} if fmt == "jpeg" else {}))
    return out.getvalue()


def _per_channel(values: Sequence[float], c: int) -> torch.Tensor:
    """(1, C, 1, 1) of one value per channel, or of one value for all."""
    if len(values) not in (1, c):
        raise ImageCodecError(f"a normalisation of {len(values)} values cannot apply to {c} channels")
    return torch.tensor(list(values) * (c if len(values) == 1 else 1), dtype=torch.float32).view(1, c, 1, 1)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) uint8 -> the teacher's float32 input: x / 255, then (x - mean) / std per channel."""
    c = images.shape[1]
    return (images.float().div_(255.0) - _per_channel(mean, c)) / _per_channel(std, c)


def to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of `normalise`, rounded and clamped: the pixels a user's camera would have given."""
    c = images.shape[1]
    return ((images * _per_channel(std, c) + _per_channel(mean, c)) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def mean_encoded_bytes(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], fmt: str,
                       limit: int = 64) -> int:
    """Bytes of one image as a client would send it: "float32", "uint8", or the mean PNG/JPEG size
    of up to `limit` of the normalised (N, C, H, W) `images` (what the latency model charges)."""
    per_image = int(images[0].numel())
    if fmt == "float32":
        return 4 * per_image
    if fmt == "uint8":
        return per_image
    pixels = to_uint8(images[:limit], mean, std)
    return round(sum(len(encode_image(p, fmt)) for p in pixels) / len(pixels))
