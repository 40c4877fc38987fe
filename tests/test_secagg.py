"""Secure aggregation: exact sums with dropouts, masked uploads that look uniform, Shamir's threshold,
refused shares, and the shared-scale quantizer (the plain shared-scale mean is the oracle)."""
import math

import numpy as np
import pytest
import torch

from fl_lib.core.errors import ConfigError
from fl_lib.core.quant import q_max
from fl_lib.core.rng import Stream, numpy_generator
from fl_lib.privacy.secagg import (PRIME, SHARE_BYTES, SecAggError, channel_bound, combine_shares, decode_sum,
                           masked_sum, masked_upload_bytes, masking_overhead_bits, modulus_bits,
                           recover_private_key, secure_mean, shared_scale_codes, shared_scale_mean,
                           split_secret, threshold_for, to_signed)


def client_codes(num_clients, bits=8, shape=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    qm = q_max(bits)
    return [rng.integers(-qm, qm + 1, size=shape).astype(np.int16) for _ in range(num_clients)]


@pytest.mark.parametrize("num_clients,dropped", [
    (1, ()), (2, ()), (3, ()), (3, (1,)), (4, (0,)), (5, (2,)), (5, (0, 4)), (8, (3,)), (8, (1, 6)), (8, (0, 2, 7)),
])
def test_sum_is_exact_with_and_without_dropouts(num_clients, dropped):
    codes = client_codes(num_clients)
    modulus = 2 ** modulus_bits(8, num_clients)
    masked, total = masked_sum(codes, modulus, seed=11, dropped=dropped)
    survivors = [u for u in range(num_clients) if u not in dropped]
    assert sorted(masked) == survivors  # the server receives nothing from dropped clients
    plain = np.sum([codes[u].astype(np.int64) for u in survivors], axis=0)
    assert np.array_equal(to_signed(total, modulus), plain)
    assert total.shape == codes[0].shape and total.dtype == np.uint64
    if num_clients > 1:  # what the server sees is not the codes
        assert not any(np.array_equal(masked[u] % modulus, codes[u] % modulus) for u in survivors)


@pytest.mark.parametrize("modulus", [2 ** 3, 2 ** 32, 2 ** 40, 2 ** 64])
def test_sum_is_exact_mod_any_power_of_two(modulus):
    rng = np.random.default_rng(1)
    codes = [rng.integers(-2 ** 62, 2 ** 62, size=50) for _ in range(4)]
    _, total = masked_sum(codes, modulus, seed=2, dropped=(1,))
    want = sum(codes[u].astype(np.uint64) for u in (0, 2, 3)) & np.uint64(modulus - 1)  # wraps mod 2^64
    assert np.array_equal(total, want)


def test_deterministic_given_seed_and_round():
    codes = client_codes(4)
    a, _ = masked_sum(codes, 2 ** 10, seed=5, round=3)
    b, _ = masked_sum(codes, 2 ** 10, seed=5, round=3)
    c, _ = masked_sum(codes, 2 ** 10, seed=5, round=4)
    assert all(np.array_equal(a[u], b[u]) for u in a)
    assert not any(np.array_equal(a[u], c[u]) for u in a)


def chi_square_uniform(values, bins):
    counts = np.bincount(values.astype(np.int64), minlength=bins)
    expected = values.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_a_masked_upload_is_independent_of_its_codes():
    n, k = 40_000, 8
    modulus = 2 ** k
    zeros, top = np.zeros(n, np.int16), np.full(n, q_max(k), np.int16)
    others = client_codes(2, bits=k, shape=(n,), seed=3)
    # A constant input: its masked upload's residues mod 2^k fill the histogram evenly.
    # Chi-square with 255 degrees of freedom: mean 255, sd 22.6; 400 is 6.4 sd out.
    for constant in (zeros, top):
        masked, _ = masked_sum([constant] + others, modulus, seed=9)
        assert chi_square_uniform(masked[0], modulus) < 400
    # Random codes: the masked values are uncorrelated with them (|r| ~ 1/sqrt(n) = 0.005).
    codes = client_codes(3, bits=k, shape=(n,), seed=4)
    masked, _ = masked_sum(codes, modulus, seed=9)
    for u in range(3):
        r = np.corrcoef(codes[u].astype(np.float64), masked[u].astype(np.float64))[0, 1]
        assert abs(r) < 5 / math.sqrt(n)


def test_fewer_survivors_than_the_threshold_cannot_unmask():
    codes = client_codes(5)  # threshold 3
    assert threshold_for(5) == 3
    with pytest.raises(SecAggError, match=r"only 2 of 5 clients survived; .*threshold=3"):
        masked_sum(codes, 2 ** 12, seed=1, dropped=(0, 1, 2))
    with pytest.raises(SecAggError, match="threshold"):
        masked_sum(client_codes(2), 2 ** 12, seed=1, dropped=(0,))  # 2 clients: no dropout survivable
    # An explicit lower threshold lets the same two survivors through.
    _, total = masked_sum(codes, 2 ** 12, seed=1, dropped=(0, 1, 2), threshold=2)
    assert np.array_equal(to_signed(total, 2 ** 12), codes[3].astype(np.int64) + codes[4])


def shares(n=6, t=4, owner=2, seed=0):
    secret = numpy_generator(seed, 1, owner, Stream.SECAGG).bytes(32)
    return secret, split_secret(secret, n, t, np.random.default_rng(seed), owner=owner)


def test_any_threshold_shares_reconstruct_and_fewer_refuse():
    secret, sh = shares()
    assert all(len(s) == SHARE_BYTES for s in sh)
    for subset in ([0, 1, 2, 3], [5, 3, 1, 0], [2, 3, 4, 5], list(range(6))):
        assert combine_shares([sh[i] for i in subset], 4) == secret
    with pytest.raises(SecAggError, match="3 shares cannot reconstruct .* threshold 4"):
        combine_shares(sh[:3], 4)


def test_malformed_or_short_shares_are_refused():
    secret, sh = shares()
    good = sh[:3]
    cases = {
        "short": sh[3][:-1],
        "long": sh[3] + b"\0",
        "empty": b"",
        "x = 0": sh[3][:2] + b"\0\0" + sh[3][4:],
        "bad kind": sh[3][:4] + b"\7" + sh[3][5:],
        "y >= prime": sh[3][:5] + PRIME.to_bytes(66, "big"),
    }
    for why, bad in cases.items():
        with pytest.raises(SecAggError, match="malformed share"):
            combine_shares(good + [bad], 4)
    with pytest.raises(SecAggError, match="must be bytes"):
        combine_shares(good + ["not bytes"], 4)
    with pytest.raises(SecAggError, match="duplicate share indices"):
        combine_shares(good + [sh[0]], 4)
    _, other = shares(owner=3)
    with pytest.raises(SecAggError, match="different secrets"):
        combine_shares(good + [other[3]], 4)
    with pytest.raises(SecAggError, match="expected client 2's"):
        combine_shares(other[:4], 4, owner=2)


def test_a_tampered_key_share_is_caught_by_the_public_key():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    key = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = key.public_key().public_bytes_raw()
    sh = split_secret(key.private_bytes_raw(), 5, 3, np.random.default_rng(0), owner=1)
    assert recover_private_key(sh[1:4], 3, public).private_bytes_raw() == key.private_bytes_raw()
    flipped = bytearray(sh[2])
    flipped[-1] ^= 1  # well formed, wrong value
    with pytest.raises(SecAggError, match="corrupt"):
        recover_private_key([sh[1], bytes(flipped), sh[3]], 3, public)


def test_bad_arguments_are_refused():
    codes = client_codes(3)
    for modulus in (0, 1, 6, 2 ** 65, 2.0 ** 8, True):
        with pytest.raises(SecAggError, match="modulus="):
            masked_sum(codes, modulus, seed=0)
    with pytest.raises(SecAggError, match="dropped client 3"):
        masked_sum(codes, 2 ** 8, seed=0, dropped=(3,))
    with pytest.raises(SecAggError, match="threshold=4"):
        masked_sum(codes, 2 ** 8, seed=0, threshold=4)
    with pytest.raises(SecAggError, match="must be integers"):
        masked_sum([c.astype(np.float32) for c in codes], 2 ** 8, seed=0)
    with pytest.raises(SecAggError, match="shape"):
        masked_sum(codes[:2] + [codes[2][:2]], 2 ** 8, seed=0)


def update(seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(6, 3, 3, 3, generator=g) * scale,
            "conv.bias": torch.randn(6, generator=g) * scale,
            "fc.weight": torch.randn(10, 24, generator=g) * scale,
            "steps": torch.tensor(seed)}


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_shared_scale_round_trip_error_at_most_half_a_step(bits):
    u = update(0)
    bound = channel_bound(u)  # the largest bound that never clips this update
    codes, scales = shared_scale_codes(u, bound, bits)
    back = decode_sum(codes, scales, 1)
    assert set(codes) == {"conv.weight", "conv.bias", "fc.weight"}  # the counter is not coded
    for name, q in codes.items():
        c = q.shape[0] if q.dim() >= 2 else 1
        assert q.abs().max() <= q_max(bits)
        err = (back[name].double() - u[name].double()).reshape(c, -1).abs()
        assert (err <= scales[name].double()[:, None] * (0.5 + 1e-6) + 1e-12).all()
    # A value beyond the public bound is clipped to q_max; scales are the same for everyone.
    big, _ = shared_scale_codes({"w": torch.tensor([[5.0, -5.0, 0.1]])}, 1.0, bits)
    assert big["w"].tolist() == [[q_max(bits), -q_max(bits), round(0.1 * q_max(bits))]]
    assert all(torch.equal(scales[k], shared_scale_codes(update(1), bound, bits)[1][k]) for k in scales)


def test_shared_scale_bad_bounds():
    with pytest.raises(ConfigError, match="channels"):
        shared_scale_codes(update(0), {"conv.weight": torch.ones(5), "conv.bias": 1.0, "fc.weight": 1.0}, 8)
    with pytest.raises(ConfigError, match="finite"):
        shared_scale_codes(update(0), -1.0, 8)
    with pytest.raises(ConfigError, match="no entry"):
        shared_scale_codes(update(0), {"conv.weight": 1.0}, 8)


@pytest.mark.parametrize("weights,dropped", [(None, ()), ([120, 30, 75, 400, 9], ()), ([120, 30, 75, 400, 9], (1, 3))])
def test_secure_mean_equals_the_shared_scale_mean_exactly(weights, dropped):
    ups = [update(s) for s in range(5)]
    bound = 0.1  # a public clip-like bound, same grid for every client
    mean, nbytes = secure_mean(ups, weights, 8, bound, seed=3, round=7, dropped=dropped)
    plain = shared_scale_mean(ups, weights, 8, bound, dropped=dropped)
    assert all(torch.equal(mean[k], plain[k]) for k in plain) and mean.keys() == ups[0].keys()
    # ... and it is FedAvg's weighted mean of the survivors up to half a grid step
    survivors = [u for u in range(5) if u not in dropped]
    w = [1] * 5 if weights is None else weights
    n = sum(w[u] for u in survivors)
    exact = sum(ups[u]["fc.weight"].double() * w[u] for u in survivors) / n
    assert (mean["fc.weight"].double() - exact).abs().max() <= bound / q_max(8) / 2 + 1e-9
    num_params = 6 * 27 + 6 + 240
    k = modulus_bits(8, sum(w))
    assert nbytes == masked_upload_bytes(num_params, 8, 5, sum(w))
    assert nbytes == math.ceil((num_params + 1) * k / 8) + 32 + 2 * 4 * SHARE_BYTES + 5 * SHARE_BYTES


def test_extreme_codes_do_not_wrap():
    bits, weights = 4, [1000, 3, 77]
    ups = [{"w": torch.full((3, 4), sign * 9.0)} for sign in (1, 1, 1)]
    mean, _ = secure_mean(ups, weights, bits, 1.0, seed=0, round=1)
    assert torch.equal(mean["w"], torch.full((3, 4), 1.0))  # every code at q_max
    ups = [{"w": torch.full((3, 4), -9.0)} for _ in range(3)]
    mean, _ = secure_mean(ups, weights, bits, 1.0, seed=0, round=1)
    assert torch.equal(mean["w"], torch.full((3, 4), -1.0))


def test_modulus_and_overhead_bits():
    assert modulus_bits(16, 1) == 16 and masking_overhead_bits(16, 1) == 0
    assert masking_overhead_bits(16, 10) == 4 and masking_overhead_bits(8, 16) == 4
    assert masking_overhead_bits(8, 17) == 5
    assert masking_overhead_bits(16, 10, total_weight=50_000) == 16
    for bits in (2, 8, 16):  # the worst sum fits in the signed range, one bit fewer would not
        for w in (1, 2, 3, 10, 1000, 2 ** 20):
            k = modulus_bits(bits, w)
            assert w * q_max(bits) < 2 ** (k - 1) and not (k > bits and w * q_max(bits) < 2 ** (k - 2))
    with pytest.raises(SecAggError, match="> 64 bits"):
        modulus_bits(16, 2 ** 60)
    with pytest.raises(SecAggError, match="weight="):
        secure_mean([update(0)], [2.5], 8, 0.1, seed=0, round=1)


def test_equal_sample_counts_cost_what_uniform_weights_cost():
    ups = [update(s) for s in range(4)]
    a, bytes_a = secure_mean(ups, [500] * 4, 8, 0.1, seed=1, round=2)
    b, bytes_b = secure_mean(ups, None, 8, 0.1, seed=1, round=2)
    assert bytes_a == bytes_b == masked_upload_bytes(6 * 27 + 6 + 240, 8, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channel_bound_lets_zero_channels_grow():
    from fl_lib.privacy.secagg import MIN_BOUND, channel_bound
    b = channel_bound({"bias": torch.zeros(3), "w": torch.tensor([[0.5, -2.0], [0.0, 0.0]])}, margin=1.5)
    assert torch.allclose(b["bias"], torch.full((3,), MIN_BOUND * 1.5))
    assert torch.allclose(b["w"], torch.tensor([3.0, MIN_BOUND * 1.5]))


def test_rotated_dp_uploads_count_the_padded_vector_and_have_uniform_weights():
    k = modulus_bits(8, 5)
    assert (masked_upload_bytes(1000, 8, 5, rotated=True) - masked_upload_bytes(1000, 8, 5)
            == math.ceil(1024 * k / 8) - math.ceil(1001 * k / 8))  # 2^10 values, no weight slot
    with pytest.raises(SecAggError, match="uniform weights"):
        masked_upload_bytes(1000, 8, 5, total_weight=7, rotated=True)
