from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.codec import DTYPES, CodecError, check_images, decode, encode, image_message_bytes


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_roundtrip_every_dtype(dtype):
    x = (torch.randn(2, 3, 4) * 5).to(DTYPES[dtype])
    y = decode(encode(x))
    assert y.dtype == x.dtype and y.shape == x.shape and torch.equal(x, y)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=5))
def test_roundtrip_shapes(shape):
    x = torch.randn(shape)
    assert torch.equal(decode(encode(x)), x)


def test_encode_non_contiguous_and_into_message():
    x = torch.arange(12.0).reshape(3, 4).t()
    msg = pb.FeaturesReply()
    encode(x, msg.features)
    assert torch.equal(decode(msg.features), x)


def test_encode_refuses_unknown_dtype():
    with pytest.raises(CodecError, match="cannot be sent"):
        encode(torch.zeros(2, dtype=torch.complex64))


def _msg(data: bytes, dtype: str, shape: list[int]) -> pb.Tensor:
    return pb.Tensor(data=data, dtype=dtype, shape=shape)


@pytest.mark.parametrize("msg, kwargs, match", [
    (_msg(b"\0" * 8, "float128", [2]), {}, "unknown dtype 'float128'"),
    (_msg(b"\0" * 8, "int64", [1]), {"dtypes": ("float32",)}, "dtype 'int64' is not accepted"),
    (_msg(b"\0" * 8, "float32", [-2]), {}, r"invalid shape \[-2\]"),
    (_msg(b"\0" * 4, "float32", [1] * 9), {}, "invalid shape"),
    (_msg(b"\0" * 8, "float32", [2]), {"ndim": 4}, "expected 4 dimensions"),
    (_msg(b"", "float32", [0, 3]), {}, "empty tensor"),
    (_msg(b"", "float32", [2]), {}, "empty tensor"),
    (_msg(b"\0" * 12, "float32", [2]), {}, "needs 8 bytes, got 12"),
    (_msg(b"\0" * 400, "float32", [100]), {"max_elements": 99}, "100 elements exceed the limit of 99"),
])
def test_decode_rejects(msg, kwargs, match):
    with pytest.raises(CodecError, match=match):
        decode(msg, **kwargs)


def test_check_images():
    check_images(torch.zeros(2, 3, 8, 8), (3, 8, 8), max_batch=2)
    with pytest.raises(CodecError, match=r"expected images of shape \(B, 3, 8, 8\)"):
        check_images(torch.zeros(2, 1, 8, 8), (3, 8, 8), max_batch=4)
    with pytest.raises(CodecError, match="batch of 3 images; this server accepts 1 to 2"):
        check_images(torch.zeros(3, 3, 8, 8), (3, 8, 8), max_batch=2)
    bad = torch.zeros(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CodecError, match="NaN"):
        check_images(bad, (3, 8, 8), max_batch=2)


def test_message_limit_fits_the_largest_batch_with_margin():
    limit = image_message_bytes((3, 16, 16), max_batch=4)
    assert limit > 4 * 3 * 16 * 16 * 4 + 1024


def test_compact_input_needs_the_plans_normalisation_and_one_kind_of_payload():
    from shoal.runtime.codec import decode_input

    shape, norm = (3, 8, 8), ((0.5,), (0.25,))
    pixels = torch.full((1, *shape), 255, dtype=torch.uint8)
    msg = encode(pixels)
    with pytest.raises(CodecError, match="records no input normalisation"):
        decode_input(msg, pb.EncodedImages(), shape, 4, None)
    x = decode_input(msg, pb.EncodedImages(), shape, 4, norm)
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full_like(x, 2.0))   # (1 - 0.5) / 0.25
    with pytest.raises(CodecError, match="either a tensor or encoded images"):
        decode_input(msg, pb.EncodedImages(format="png", images=[b"x"]), shape, 4, norm)
    floats = encode(torch.randn(2, *shape))
    assert decode_input(floats, pb.EncodedImages(), shape, 4, None).shape == (2, *shape)   # float32 needs none
    with pytest.raises(CodecError, match="dtype 'int64' is not accepted"):
        decode_input(encode(torch.zeros(1, *shape, dtype=torch.int64)), pb.EncodedImages(), shape, 4, norm)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_no_byte_string_crashes_the_image_header_parsers(data):
    from shoal.data.imagecodec import ImageCodecError, header_size

    for fmt in ("png", "jpeg"):
        try:
            h, w = header_size(data, fmt)
        except ImageCodecError:
            continue
        assert h >= 0 and w >= 0


def _texts(ids, mask, dtype=torch.int32):
    return encode(torch.stack([torch.tensor(ids), torch.tensor(mask)], 1).to(dtype))


@pytest.mark.parametrize("ids, mask, dtype, match", [
    ([[5, 6, 7]], [[1, 1, 1]], torch.float32, "dtype 'float32' is not accepted here; send int32 or int64"),
    ([[5, 6, 7, 8, 9]], [[1, 1, 1, 1, 1]], torch.int32, "5 tokens; this plan accepts at most 4"),
    ([[5, 100, 7]], [[1, 1, 1]], torch.int32, r"token id 100 is outside the vocabulary \(0..99\)"),
    ([[5, -1, 7]], [[1, 1, 1]], torch.int64, "token id -1 is outside the vocabulary"),
    ([[5, 6, 7]], [[1, 2, 1]], torch.int32, "mask must be 0 or 1"),
    ([[5, 6, 7]], [[1, 0, 1]], torch.int32, "right-padded"),
    ([[5, 6, 7]], [[0, 0, 0]], torch.int32, "at least one real token"),
    ([[1], [2], [3]], [[1], [1], [1]], torch.int32, "batch of 3 texts; this server accepts 1 to 2"),
])
def test_token_input_is_checked_before_any_model_runs(ids, mask, dtype, match):
    from shoal.runtime.codec import decode_input

    with pytest.raises(CodecError, match=match):
        decode_input(_texts(ids, mask, dtype), pb.EncodedImages(), (2, 4), 2, None, vocab_size=100)


def test_token_input_decodes_to_int64_and_refuses_images():
    from shoal.data.text import TOKENS_FORMAT
    from shoal.runtime.codec import decode_input, encode_input

    x = decode_input(_texts([[5, 6, 0], [7, 0, 0]], [[1, 1, 0], [1, 0, 0]]), pb.EncodedImages(), (2, 4), 2, None,
                     vocab_size=100)
    assert x.dtype == torch.int64 and x.shape == (2, 2, 3) and x[0, 0].tolist() == [5, 6, 0]
    with pytest.raises(CodecError, match="text plan; send token ids"):
        decode_input(pb.Tensor(), pb.EncodedImages(format="png", images=[b"x"]), (2, 4), 2, None, vocab_size=100)
    request = pb.PredictRequest()   # a client cuts a padded batch to its longest text and sends int32
    padded = torch.stack([torch.tensor([[5, 6, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0, 0]])], 1)
    encode_input(padded, TOKENS_FORMAT, request)
    assert request.input.dtype == "int32" and list(request.input.shape) == [1, 2, 2]
