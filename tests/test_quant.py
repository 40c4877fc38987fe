"""Channel-wise quantizer, equations (1)-(3): checked against torch's fake-quantize op."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl_lib.core.errors import CodecError, ConfigError
from fl_lib.core.quant import (check_bits, dequantize, fake_quantize, num_channels, q_max, quantize,
                          relative_error)

TINY = 2.0 ** -149  # smallest float32 subnormal: the absolute resolution of any float32 result


def assert_error_bound(w, qt):
    """|w - w_hat| <= s_c / 2 per element, widened for float32 arithmetic in (2) and (3)."""
    c = num_channels(w.shape)
    w64 = w.double().reshape(c, -1)
    err = (dequantize(qt).double().reshape(c, -1) - w64).abs()
    # w / s_c is rounded to float32 before round() (up to q_max * 2^-24 of a step), and
    # s_c * q is rounded to float32 (up to 2^-24 relative, or half a subnormal step).
    eps = 2.0 ** -24
    bound = qt.scale.double()[:, None] * (0.5 + q_max(qt.bits) * eps) + w64.abs() * 2 * eps + TINY
    assert (err <= bound).all()


def channel_scaled(shape, seed):
    """Random weights whose channels span six orders of magnitude, as real layers' do."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * 10 ** torch.empty(shape[0], *[1] * (len(shape) - 1)).uniform_(-3, 3, generator=g)


@pytest.mark.parametrize("bits", range(2, 17))
def test_matches_torch_fake_quantize(bits):
    qm = q_max(bits)
    differing = total = 0
    for seed, shape in enumerate([(96, 3, 7, 7), (128, 256), (10, 512, 1, 1)]):
        w = channel_scaled(shape, seed)
        qt = quantize(w, bits)
        assert qt.q.shape == w.shape and qt.scale.shape == (shape[0],)
        assert qt.q.dtype == (torch.int8 if bits <= 8 else torch.int16)
        assert int(qt.q.abs().max()) == qm  # the largest |w| of each channel maps to q_max
        ours = dequantize(qt)
        oracle = torch.fake_quantize_per_channel_affine(
            w, qt.scale, torch.zeros(shape[0], dtype=torch.int32), 0, -qm, qm)
        diff = ours != oracle
        # The op multiplies by a float32 reciprocal of s_c, so at near-exact ties it may
        # round the other way: then its code is off by exactly one step.
        scale = qt.scale.double().reshape(-1, *[1] * (len(shape) - 1))
        oracle_q = torch.round(oracle.double() / scale)
        assert torch.equal((oracle_q * scale).float(), oracle)  # the oracle is s_c * integer
        assert ((oracle_q - qt.q.double()).abs()[diff] == 1).all()
        differing, total = differing + int(diff.sum()), total + w.numel()
    # Both sides round w / s_c to float32 (relative error ~2^-24) before round(), so they
    # can disagree only within ~q_max * 2^-24 of a half-integer: rare, but more so at 16
    # bits (measured: 0 below 7 bits, ~2e-4 of elements at 16 bits).
    assert differing <= 3 + total * q_max(bits) * 2.0 ** -24


def test_round_half_to_even():
    # s_c = 3 / 3 = 1 exactly at 3 bits, so w / s_c hits the ties .5 exactly.
    w = torch.tensor([3.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert quantize(w, 3).q.tolist() == [3, 0, 2, 2, 0, -2, -2]


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, 16),
       w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
                    elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_error_at_most_half_a_step(bits, w):
    w = torch.from_numpy(w)
    qt = quantize(w, bits)
    w_hat = dequantize(qt)
    assert w_hat.dtype == torch.float32 and w_hat.shape == w.shape
    assert torch.isfinite(w_hat).all()
    assert_error_bound(w, qt)
    assert (qt.q.abs() <= q_max(bits)).all()


@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e-40, 1e-44, 3e38])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_extreme_magnitudes(magnitude, bits):
    w = channel_scaled((4, 50), 0)
    w = (w / w.abs().amax(1, keepdim=True) * magnitude).float()  # subnormal for 1e-40, 1e-44
    qt = quantize(w, bits)
    w_hat = dequantize(qt)
    assert torch.isfinite(w_hat).all() and (qt.scale > 0).all()
    assert_error_bound(w, qt)


def test_zero_channels_come_back_exactly_zero():
    w = torch.randn(5, 3, 3)
    w[1] = 0
    w[4] = -0.0
    for bits in (2, 8, 16):
        qt = quantize(w, bits)
        assert qt.scale[1] == 0 and qt.scale[4] == 0
        w_hat = dequantize(qt)
        assert torch.isfinite(w_hat).all()
        assert (w_hat[1] == 0).all() and (w_hat[4] == 0).all() and (w_hat[0] != 0).any()
    assert torch.equal(dequantize(quantize(torch.zeros(7), 4)), torch.zeros(7))


@pytest.mark.parametrize("w", [torch.tensor(2.5), torch.tensor([-3.0]), torch.ones(1, 1, 1, 1) * 0.1,
                               torch.tensor([1.0, -2.0, 0.5])])
def test_small_shapes_are_one_channel_or_per_row(w):
    qt = quantize(w, 8)
    assert qt.scale.shape == (num_channels(w.shape),) == (1,)
    assert qt.q.shape == w.shape
    w_hat = dequantize(qt)
    assert w_hat.shape == w.shape
    assert ((w_hat - w).abs() <= qt.scale / 2 + 1e-7).all()
    if w.numel() == 1:  # a single value is its own max: q = +-q_max, w_hat = w up to rounding
        assert abs(int(qt.q.reshape(-1)[0])) == 127


def test_empty_tensors():
    for shape in [(0,), (0, 3), (3, 0)]:
        w = torch.empty(shape)
        assert dequantize(quantize(w, 4)).shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_quantized_in_float32(dtype):
    w = torch.randn(8, 20).to(dtype)
    qt = quantize(w, 8)
    assert qt.dtype == dtype and qt.scale.dtype == torch.float32
    ref = quantize(w.float(), 8)
    assert torch.equal(qt.q, ref.q) and torch.equal(qt.scale, ref.scale)
    assert dequantize(qt).dtype == torch.float32


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_rejected_by_name(bad):
    w = torch.randn(4, 4)
    w[2, 1] = bad
    with pytest.raises(CodecError, match="features.0.weight"):
        quantize(w, 8, name="features.0.weight")
    with pytest.raises(CodecError, match="non-finite"):
        quantize(w.half(), 8)


def test_integer_tensors_are_rejected():
    with pytest.raises(CodecError, match="num_batches_tracked"):
        quantize(torch.tensor(3), 8, name="num_batches_tracked")


@pytest.mark.parametrize("bad", [True, False, 16.0, 0, 1, 17, 31, 33, 64, -8, "8", None])
def test_bad_bits_are_rejected(bad):
    with pytest.raises(ConfigError, match=r"bits=.*2\.\.16 or 32"):
        check_bits(bad)
    with pytest.raises(ConfigError):
        quantize(torch.ones(3), bad)


def test_good_bits_and_32_means_float32():
    assert [check_bits(b) for b in [*range(2, 17), 32]] == [*range(2, 17), 32]
    with pytest.raises(ConfigError, match="2..16"):
        quantize(torch.ones(3), 32)  # a QTensor always holds integer codes
    w = torch.randn(3, 4).half()
    assert torch.equal(fake_quantize(w, 32), w.float())
    assert torch.equal(fake_quantize(w, 6), dequantize(quantize(w, 6)))


def test_unknown_rounding_is_rejected():
    with pytest.raises(ConfigError, match="'floor'"):
        quantize(torch.ones(3), 8, rounding="floor")


def test_stochastic_rounding_is_unbiased():
    # N identical rows: each row is its own channel with the same scale, so one call
    # gives N independent draws of every element.
    n, bits = 4000, 4
    w = torch.linspace(-1, 1, 101)
    w[7] = 1.3  # the max, so s_c = 1.3 / 7 and few elements land on a code exactly
    rows = w.repeat(n, 1)
    g = torch.Generator().manual_seed(0)
    qt = quantize(rows, bits, rounding="stochastic", generator=g)
    w_hat = dequantize(qt).double()
    s = float(qt.scale[0])
    frac = (w.double() / s) - torch.floor(w.double() / s)
    # Each draw is w +- a fraction of s_c: never more than one step away, always a neighbor.
    assert ((w_hat - w.double()).abs() < s * (1 + 1e-6)).all()
    # Standard error of the mean of N draws: s_c * sqrt(p (1 - p) / N), p = fractional part.
    se = s * torch.sqrt(frac * (1 - frac) / n) + 1e-6  # + float32 rounding of w_hat
    z = (w_hat.mean(0) - w.double()) / se
    assert z.abs().max() < 5  # 101 elements: a |z| of 5 has probability ~6e-5 overall
    assert abs(float(z.mean())) < 4 / math.sqrt(len(w))


def test_stochastic_rounding_is_reproducible():
    w = torch.randn(16, 32)
    draw = lambda seed: quantize(w, 4, "stochastic", torch.Generator().manual_seed(seed)).q
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    nearest = quantize(w, 4).q
    assert ((draw(1).int() - nearest.int()).abs() <= 1).all()


def test_relative_error():
    w, w_hat = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])
    assert relative_error(w, w_hat) == pytest.approx(0.5 / 5)
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.zeros(3), torch.ones(3)) == math.inf
    # state dicts pool their float tensors into one vector; integer buffers are left out
    a, b = {"x": w, "n": torch.tensor(3)}, {"x": w_hat, "n": torch.tensor(4)}
    assert relative_error(a, b) == pytest.approx(0.5 / 5)
    two = {"x": torch.tensor([3.0]), "y": torch.tensor([4.0])}
    assert relative_error(two, {"x": torch.tensor([3.0]), "y": torch.tensor([4.5])}) == pytest.approx(0.1)
