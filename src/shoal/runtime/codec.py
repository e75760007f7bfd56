"""Tensors on the wire: raw little-endian bytes + dtype + shape (never pickle).

`encode` copies the tensor once into the protobuf `bytes` field (which
cannot borrow memory). `decode` adds no copy of its own: the tensor views the
`bytes` object protobuf hands out and is read-only by contract (no shoal
model writes to its input).

Everything a peer sends is validated before it is viewed: a known dtype,
a shape of non-negative dimensions whose element count matches the byte
count, not empty, at most `max_elements`. A violation raises `CodecError`,
which servers turn into INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import torch

from shoal.data.imagecodec import FORMATS, ImageCodecError, decode_image, encode_image, normalise, to_uint8
from shoal.data.text import TOKENS_FORMAT, WIRE_DTYPE
from shoal.errors import DataError
from shoal.models.bert import cut_to_longest
from shoal.runtime import shoal_pb2 as pb

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 8
MAX_ABS_INPUT = 1e4   # |value| of a float input: far beyond any normalised image, far below overflow

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("shoal's wire format is little-endian; this host is big-endian")

# decode() views the (immutable) protobuf bytes on purpose. torch warns once per process that such a
# buffer is not writable; spend that one warning here, silenced, instead of in the first request.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.frombuffer(b"\0\0\0\0", dtype=torch.float32)


class CodecError(DataError):
    """A tensor on the wire is malformed or not what the receiver accepts (-> INVALID_ARGUMENT)."""


def encode(tensor: torch.Tensor, out: pb.Tensor | None = None) -> pb.Tensor:
    """A CPU tensor as a `Tensor` message (one copy of the data).

    Args:
        tensor: Any shape; dtype one of `DTYPES`.
        out: A message to fill in place (e.g. `reply.features`), or None for a new one.

    Raises:
        CodecError: the dtype cannot travel.
    """
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise CodecError(f"dtype {tensor.dtype} cannot be sent; use one of {sorted(DTYPES)}")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    msg = out if out is not None else pb.Tensor()
    msg.data = data
    msg.dtype = name
    del msg.shape[:]
    msg.shape.extend(t.shape)
    return msg


def decode(
    msg: pb.Tensor,
    *,
    what: str = "tensor",
    max_elements: int = 1 << 26,
    dtypes: tuple[str, ...] | None = None,
    ndim: int | None = None,
) -> torch.Tensor:
    """View a `Tensor` message as a read-only CPU tensor, after validating it.

    Args:
        msg: The message.
        what: Name used in error messages ("input", "features of edge-a").
        max_elements: Largest element count accepted.
        dtypes: Accepted dtype names (None: any of `DTYPES`).
        ndim: Required number of dimensions (None: any up to 8).

    Returns:
        A tensor of `msg.shape` and dtype; it shares memory with `msg.data`: do not write to it.

    Raises:
        CodecError: unknown or refused dtype, bad shape, byte count mismatch, empty or too large.
    """
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise CodecError(f"{what}: unknown dtype {msg.dtype!r}; expected one of {sorted(DTYPES)}")
    if dtypes is not None and msg.dtype not in dtypes:
        raise CodecError(f"{what}: dtype {msg.dtype!r} is not accepted here; send {' or '.join(dtypes)}")
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
        raise CodecError(f"{what}: invalid shape {list(shape)}")
    if ndim is not None and len(shape) != ndim:
        raise CodecError(f"{what}: expected {ndim} dimensions, got shape {list(shape)}")
    data = msg.data  # upb returns a new bytes object per access: read it once
    count = math.prod(shape)
    if count == 0 or not data:
        raise CodecError(f"{what}: empty tensor (shape {list(shape)}, {len(data)} bytes)")
    if count > max_elements:
        raise CodecError(f"{what}: {count} elements exceed the limit of {max_elements} (shape {list(shape)})")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != count * itemsize:
        raise CodecError(f"{what}: shape {list(shape)} of {msg.dtype} needs {count * itemsize} bytes, "
                         f"got {len(data)}")
    return torch.frombuffer(data, dtype=dtype).view(shape)


def check_images(x: torch.Tensor, input_shape: tuple[int, ...], max_batch: int, what: str = "input") -> None:
    """Check a decoded (B, C, H, W) batch against the model's input shape and the batch limit.

    Raises:
        CodecError: wrong per-image shape, or a batch outside 1..max_batch.
    """
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise CodecError(f"{what}: expected images of shape (B, {', '.join(map(str, input_shape))}), "
                         f"got {list(x.shape)}")
    if not 1 <= x.shape[0] <= max_batch:
        raise CodecError(f"{what}: batch of {x.shape[0]} images; this server accepts 1 to {max_batch}")
    if x.is_floating_point() and not bool((x.abs() <= MAX_ABS_INPUT).all()):
        if not bool(torch.isfinite(x).all()):
            raise CodecError(f"{what}: contains NaN or infinite values")
        raise CodecError(f"{what}: values beyond ±{MAX_ABS_INPUT:g}; a normalised image lies within a few "
                         "units of 0 (send float32 normalised as the plan records, or uint8 pixels)")


def image_message_bytes(input_shape: tuple[int, ...], max_batch: int, margin: int = 64 * 1024) -> int:
    """gRPC message size limit for a batch of `max_batch` float32 images plus framing margin.

    Twice the payload, so a batch somewhat over `max_batch` still reaches the codec and gets a
    precise INVALID_ARGUMENT; only far larger messages are cut by gRPC (RESOURCE_EXHAUSTED).
    """
    return 2 * max_batch * math.prod(input_shape) * 4 + margin


def decode_input(tensor: pb.Tensor, images: pb.EncodedImages, input_shape: tuple[int, ...], max_batch: int,
                 normalisation: tuple[Sequence[float], Sequence[float]] | None, what: str = "input", *,
                 vocab_size: int = 0) -> torch.Tensor:
    """The model input of a request: the (B, C, H, W) float32 batch (float32 as sent, or uint8 pixels /
    PNG / JPEG bytes normalised with the plan's (mean, std)); with `vocab_size` (a text plan), the
    (B, 2, L) int64 token ids and mask (`decode_tokens`). Everything is checked before it is decoded.

    Raises:
        CodecError: malformed, refused or oversized input, or compact input for a plan that
            records no normalisation.
    """
    if vocab_size:
        if len(images.images):
            raise CodecError(f"{what}: this is a text plan; send token ids and mask, not encoded images")
        return decode_tokens(tensor, input_shape[-1], vocab_size, max_batch, what)
    if len(images.images):
        if tensor.data or tensor.shape:
            raise CodecError(f"{what}: send either a tensor or encoded images, not both")
        if images.format not in FORMATS:
            raise CodecError(f"{what}: image format {images.format!r} is not one of {', '.join(FORMATS)}")
        if not 1 <= len(images.images) <= max_batch:
            raise CodecError(f"{what}: batch of {len(images.images)} images; this server accepts 1 to {max_batch}")
        spec = _normalisation(normalisation, what)
        try:
            pixels = torch.stack([decode_image(data, images.format, input_shape) for data in images.images])
        except ImageCodecError as exc:
            raise CodecError(f"{what}: {exc}") from None
        return normalise(pixels, *spec)
    per_image = math.prod(input_shape)
    x = decode(tensor, what=what, max_elements=max_batch * per_image, dtypes=("float32", "uint8"), ndim=4)
    if x.dtype == torch.uint8:
        spec = _normalisation(normalisation, what)
        check_images(x, input_shape, max_batch, what)
        return normalise(x, *spec)
    check_images(x, input_shape, max_batch, what)
    return x


def decode_tokens(tensor: pb.Tensor, max_length: int, vocab_size: int, max_batch: int, what: str = "input"
                  ) -> torch.Tensor:
    """A text request: (B, 2, L) int32 or int64 token ids stacked on their attention mask, checked and
    returned as int64. L is 1..`max_length`; every id is in 0..vocab_size - 1; the mask is 0/1,
    right-padded (ones, then zeros), with at least one real token per text.

    Raises:
        CodecError: any of the above violated; the message says which and where.
    """
    x = decode(tensor, what=what, max_elements=max_batch * 2 * max_length, dtypes=("int32", "int64"), ndim=3)
    b, two, length = x.shape
    if two != 2:
        raise CodecError(f"{what}: expected (B, 2, L) token ids and attention mask, got {list(x.shape)}")
    if not 1 <= b <= max_batch:
        raise CodecError(f"{what}: batch of {b} texts; this server accepts 1 to {max_batch}")
    if length > max_length:
        raise CodecError(f"{what}: {length} tokens; this plan accepts at most {max_length} (cut the text "
                         "when tokenising)")
    ids, mask = x[:, 0], x[:, 1]
    if bool((ids < 0).any()) or bool((ids >= vocab_size).any()):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise CodecError(f"{what}: token id {bad} is outside the vocabulary (0..{vocab_size - 1})")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise CodecError(f"{what}: the attention mask must be 0 or 1")
    if bool((mask[:, 0] != 1).any()) or (length > 1 and bool((mask[:, 1:] > mask[:, :-1]).any())):
        raise CodecError(f"{what}: the attention mask must be right-padded (ones, then zeros) with at least one "
                         "real token per text")
    return x.long()


def _normalisation(normalisation: tuple[Sequence[float], Sequence[float]] | None, what: str
                   ) -> tuple[Sequence[float], Sequence[float]]:
    if normalisation is None:
        raise CodecError(f"{what}: this plan records no input normalisation (made before compact inputs); "
                         "send float32, or plan it again")
    return normalisation


def encode_input(images: torch.Tensor, fmt: str, request: pb.PredictRequest | pb.FeaturesRequest,
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None, quality: int = 90) -> None:
    """Fill a request's input with a (B, C, H, W) batch as `fmt`: "float32" (as given), or "uint8",
    "png", "jpeg" from normalised images (`normalisation` undoes it) or from uint8 pixels; "tokens":
    a text batch (B, 2, L) cut to its longest text and sent as int32."""
    if fmt == TOKENS_FORMAT:
        if images.dim() != 3 or images.shape[1] != 2 or images.is_floating_point():
            raise CodecError(f"tokens: expected (B, 2, L) integer ids and mask, got {list(images.shape)} "
                             f"{images.dtype}")
        encode(cut_to_longest(images).to(WIRE_DTYPE).contiguous(), request.input)
        return
    if fmt == "float32":
        encode(images.float(), request.input)
        return
    if images.dtype != torch.uint8:
        if normalisation is None:
            raise CodecError(f"cannot send {fmt}: the plan records no input normalisation")
        images = to_uint8(images, *normalisation)
    if fmt == "uint8":
        encode(images.contiguous(), request.input)
        return
    if fmt not in FORMATS:
        raise CodecError(f"unknown input format {fmt!r}; use float32, uint8, png or jpeg")
    request.images.format = fmt
    request.images.images.extend(encode_image(image, fmt, quality) for image in images)
