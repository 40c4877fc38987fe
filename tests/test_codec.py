"""Upload codec: exact codes back, sizes equal to the formula, corrupted blobs refused."""
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_lib.core import codec
from fl_lib.core.codec import decode, decode_codes, encode, header_size, pack_codes, packed_size, unpack_codes
from fl_lib.core.errors import CodecError, ConfigError
from fl_lib.core.models import build_model
from fl_lib.core.quant import dequantize, q_max, quantize

WIDTHS = range(2, 17)


def sample_state(seed=0):
    """A state dict with every kind of entry: conv, linear, bias, 0-D, 1-element, int buffers."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(6, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(6, generator=g),
        "fc.weight": torch.randn(5, 13, generator=g) * 1e-3,
        "fc.bias": torch.zeros(5),
        "temperature": torch.tensor(0.7),
        "one": torch.tensor([-2.5]),
        "half": torch.randn(4, 7, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(12345678901, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(-3, 4, dtype=torch.int32),
    }


def formula_size(state, bits):
    """Payload bytes by the paper-level formula: ceil(numel * bits / 8) + 4 B per channel."""
    total = 0
    for t in state.values():
        if not t.is_floating_point():
            total += t.numel() * t.element_size()
        elif bits == 32:
            total += 4 * t.numel()
        else:
            channels = t.shape[0] if t.dim() >= 2 else 1
            total += math.ceil(t.numel() * bits / 8) + 4 * channels
    return total


@pytest.mark.parametrize("bits", WIDTHS)
def test_round_trip_gives_the_exact_codes(bits):
    state = sample_state()
    blob = encode(state, bits)
    codes, out = decode_codes(blob), decode(blob)
    assert list(out) == list(state)
    for name, t in state.items():
        if t.is_floating_point():
            qt = quantize(t, bits)
            assert torch.equal(codes[name].q, qt.q) and torch.equal(codes[name].scale, qt.scale)
            assert out[name].dtype == t.dtype  # the original float dtype is restored
            assert torch.equal(out[name], dequantize(qt).to(t.dtype))
        else:
            assert name not in codes
            assert out[name].dtype == t.dtype and torch.equal(out[name], t)


def test_float32_codec_is_exact():
    state = sample_state()
    out = decode(encode(state, 32))
    for name, t in state.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t)
    x = torch.randn(3, dtype=torch.float64)  # float64 travels as float32: rounded, dtype kept
    back = decode(encode({"x": x}, 32))["x"]
    assert back.dtype == torch.float64 and torch.equal(back, x.float().double())


@pytest.mark.parametrize("bits", [*WIDTHS, 32])
def test_length_is_header_plus_formula(bits):
    state = sample_state()
    blob = encode(state, bits)
    assert packed_size(state, bits) == formula_size(state, bits)
    assert len(blob) == header_size(blob) + formula_size(state, bits)


def test_squeezenet_16_bits_is_two_bytes_per_param_plus_scales():
    torch.manual_seed(0)
    state = build_model("squeezenet1_0", 10).state_dict()
    params = sum(t.numel() for t in state.values())
    channels = sum(t.shape[0] if t.dim() >= 2 else 1 for t in state.values())
    assert (params, channels) == (740_554, 3012)
    blob = encode(state, 16)
    assert len(blob) - header_size(blob) == 2 * params + 4 * channels
    assert header_size(blob) < 4096
    assert len(encode(state, 32)) - header_size(blob) == 4 * params


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(2, 16), data=st.data())
def test_packing_matches_a_bit_string_oracle(bits, data):
    qm = q_max(bits)
    q = np.array(data.draw(st.lists(st.integers(-qm, qm), max_size=40)), dtype=np.int32)
    packed = pack_codes(q, bits)
    # Oracle: each code offset by q_max, written least significant bit first, then
    # every 8 bits read back as one byte, again least significant bit first.
    stream = "".join(format(int(v) + qm, f"0{bits}b")[::-1] for v in q)
    stream += "0" * (-len(stream) % 8)
    assert packed == bytes(int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8))
    assert len(packed) == math.ceil(len(q) * bits / 8)
    assert np.array_equal(unpack_codes(packed, len(q), bits), q)


def small_blob():
    """A small 4-bit upload (~130 bytes): cheap to mangle at every byte and bit."""
    return encode({"w": torch.randn(3, 5), "b": torch.randn(3), "n": torch.tensor(7)}, 4)


def test_every_truncation_is_rejected():
    blob = small_blob()
    decode(blob)
    for n in range(len(blob)):
        with pytest.raises(CodecError):
            decode(blob[:n])
    with pytest.raises(CodecError):
        decode(blob + b"\x00")


def test_every_bit_flip_is_rejected():
    blob = bytearray(small_blob())
    for i in range(8 * len(blob)):
        blob[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CodecError):
            decode(bytes(blob))
        blob[i // 8] ^= 1 << (i % 8)
    decode(bytes(blob))


def test_bit_flips_in_a_large_blob_are_rejected():
    blob = bytearray(encode(build_model("cifar_cnn", 10).state_dict(), 8))
    for i in np.random.default_rng(0).choice(8 * len(blob), 200, replace=False):
        blob[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CodecError, match="corrupted|not an fl_lib"):
            decode(bytes(blob))
        blob[i // 8] ^= 1 << (i % 8)


def with_checksum(body):
    return body + struct.pack("<I", zlib.crc32(body))


def test_clear_messages_for_foreign_blobs():
    blob = small_blob()
    with pytest.raises(CodecError, match="not an fl_lib upload"):
        decode(b"PK\x03\x04" + blob[4:])
    with pytest.raises(CodecError, match="version 9"):
        decode(with_checksum(blob[:4] + b"\x09" + blob[5:-4]))
    with pytest.raises(CodecError, match="truncated"):
        decode(b"")
    bad_json = codec._PREFIX.pack(codec.MAGIC, codec.VERSION, 3) + b"{x}"
    with pytest.raises(CodecError, match="malformed"):
        decode(with_checksum(bad_json))


@pytest.mark.parametrize("bits", [4, 8, 16, 32])
def test_delta_round_trip(bits):
    state, reference = sample_state(0), sample_state(1)
    blob = encode(state, bits, reference=reference)
    out = decode(blob, reference=reference)
    for name, t in state.items():
        if not t.is_floating_point():
            assert torch.equal(out[name], t)
            continue
        delta = t.float() - reference[name].float()
        sent = delta if bits == 32 else dequantize(quantize(delta, bits))
        assert torch.equal(out[name], (sent + reference[name].float()).to(t.dtype))


def test_delta_needs_its_reference():
    state, reference = sample_state(0), sample_state(1)
    blob = encode(state, 8, reference=reference)
    with pytest.raises(CodecError, match="pass reference"):
        decode(blob)
    with pytest.raises(CodecError, match="not a delta"):
        decode(encode(state, 8), reference=reference)
    with pytest.raises(CodecError, match="conv.bias"):
        encode(state, 8, reference={k: v for k, v in reference.items() if k != "conv.bias"})
    with pytest.raises(CodecError, match="shape"):
        encode(state, 8, reference={**reference, "fc.weight": torch.zeros(5, 12)})


@pytest.mark.parametrize("bits", [8, 32])
def test_non_finite_tensor_is_named(bits):
    state = sample_state()
    state["fc.weight"][1, 2] = math.nan
    with pytest.raises(CodecError, match="fc.weight"):
        encode(state, bits)


@pytest.mark.parametrize("bad", [1, 17, 31, 33, 8.0, True])
def test_bad_bits_are_rejected(bad):
    with pytest.raises(ConfigError, match=repr(bad)):
        encode(sample_state(), bad)
    with pytest.raises(ConfigError):
        packed_size(sample_state(), bad)


def test_stochastic_encoding_is_reproducible():
    state = sample_state()
    draw = lambda seed: encode(state, 4, "stochastic", generator=torch.Generator().manual_seed(seed))
    assert draw(3) == draw(3) != draw(4)


def test_any_dict_of_tensors_works():
    grads = {"g": torch.randn(2, 3, 4), "h": torch.zeros(0)}
    out = decode(encode(grads, 6))
    assert out["g"].shape == (2, 3, 4) and out["h"].shape == (0,)
    assert decode(encode({}, 8)) == {}


def test_float32_upload_has_no_codes():
    with pytest.raises(CodecError, match="bits=32"):
        decode_codes(encode(sample_state(), 32))
