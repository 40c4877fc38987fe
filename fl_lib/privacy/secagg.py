"""Secure aggregation of quantized uploads (Bonawitz et al. 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning"), simulated in one process.

Masking. Client u holds integer codes x_u and sends, modulo m = 2^k,

    y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod m)

where s_uv = s_vu is agreed by X25519 (u's private key with v's public key; the
`cryptography` package), passed through HKDF-SHA256, and PRG is AES-256-CTR keyed by
it. The pairwise terms cancel in sum_u y_u, and b_u (a per-client self-mask seed) makes
each y_u uniform on Z_m whatever x_u is, even to a server that later learns s_u^SK.

Dropouts. Before masking, every client Shamir-shares its X25519 private key s_u^SK and
its seed b_u among all n clients with threshold t (shamir over GF(2^521 - 1), Python
ints). A client that drops after sharing but before sending y_u leaves its pairwise
masks in the survivors' y's; the survivors send the server their shares of the dropped
client's s^SK (so it recomputes those masks) and of every survivor's b (so it removes
the self-masks). With fewer than t survivors nothing can be unmasked: SecAggError. An
honest client never reveals both kinds of share for the same client, so the server
learns b_u or s_u^SK, never both, and sees each x_u only inside the sum.

What is simulated. All parties run here; randomness comes from fl_lib.rng
Stream.SECAGG generators, so a round is deterministic given (seed, round). In particular
the X25519 keys are X25519PrivateKey.from_private_bytes(32 seeded bytes): fine for a
simulation, never for a deployment, which must draw keys from os.urandom. Shares go to
their holders directly; the real protocol routes them through the server encrypted
under a second, pairwise key-agreed key (AEAD), and signs messages against an active
server. A tampered share is caught here by checking the reconstructed key against the
public key its owner advertised.

Shared scale. Per-client channel scales s_c = max_i |w_ci| / q_max (equation (1),
quant.py) put each client's codes on its own grid, so a sum of codes means nothing.
Secure aggregation needs one grid: here s_c = B_c / q_max for a public bound B_c (a clip
value, or a per-channel bound from a model every client has), and codes outside the
bound are clipped to [q_min, q_max]. DP's clipped updates do not use this grid: with the clip
as B their small coordinates round to 0 and rounding can push a norm past the clip, so they
are rotated and rounded on a finer one instead (dp_quant.py).

Weights. FedAvg weighs client k by n_k / n. Clients multiply their codes by the integer
n_k before masking and add n_k as one more coordinate, so the server learns only
sum_k n_k q_k and sum_k n_k over the survivors and divides: weighted FedAvg, exact, with
the same rounding error s_c / 2 as a plain mean (weights are first divided by their gcd,
so equal n_k cost no more than uniform weights). weights=None gives uniform weights.
The price is modulus bits: |sum_k n_k q_k| <= W q_max with W the round's total weight,
so m = 2^k with k = bit_length(W q_max) + 1 <= bits + ceil(log2 W) never wraps (bits
already holds the sign). Masked values are uniform on Z_m: each costs k bits on the
wire, not bits. With uniform weights W = K; with n_k, W = sum n_k (e.g. +16 bits for
50,000 samples against +4 for 10 clients).
"""
from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..core.errors import CodecError, ConfigError, FLError
from ..core.quant import check_bits, code_dtype, num_channels, q_max
from ..core.rng import Stream, numpy_generator

PRIME = 2 ** 521 - 1  # a Mersenne prime larger than any 32-byte secret
KEY_BYTES = 32
MASK_KEY, SELF_SEED = 0, 1  # what a share is a share of: an X25519 private key, or a self-mask seed b_u
_SHARE = struct.Struct(">HHB66s")  # owner, x (1..n), kind, y (big-endian, < PRIME)
SHARE_BYTES = _SHARE.size  # 71
MAX_CLIENTS = 2 ** 16 - 1


class SecAggError(FLError, ValueError):
    """Secure aggregation cannot proceed: too few shares, a malformed share, a bad modulus."""


# -- Shamir secret sharing over GF(PRIME) ------------------------------------------------

def threshold_for(num_clients: int) -> int:
    """Default Shamir threshold t: a strict majority of the round's clients, floor(n / 2) + 1."""
    return num_clients // 2 + 1


def _field_element(rng: np.random.Generator) -> int:
    """Uniform integer in [0, PRIME) from `rng` (521 random bits; PRIME = 2^521 - 1 is the one rejection)."""
    while True:
        x = int.from_bytes(rng.bytes(66), "big") & PRIME
        if x < PRIME:
            return x


def split_secret(secret: bytes, num_shares: int, threshold: int, rng: np.random.Generator,
                 owner: int = 0, kind: int = MASK_KEY) -> list[bytes]:
    """Shamir-share a 32-byte secret: share j (x = j + 1) is p(x), p of degree t - 1 with p(0) = secret."""
    if len(secret) != KEY_BYTES:
        raise SecAggError(f"secret must be {KEY_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= num_shares <= MAX_CLIENTS:
        raise SecAggError(f"threshold={threshold} with {num_shares} shares: need 1 <= threshold <= shares "
                          f"<= {MAX_CLIENTS}")
    coeffs = [int.from_bytes(secret, "big")] + [_field_element(rng) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for a in reversed(coeffs):  # Horner
            y = (y * x + a) % PRIME
        shares.append(_SHARE.pack(owner, x, kind, y.to_bytes(66, "big")))
    return shares


def parse_share(share: bytes) -> tuple[int, int, int, int]:
    """(owner, x, kind, y) of one share; SecAggError if it is short, long or out of range."""
    if not isinstance(share, (bytes, bytearray, memoryview)):
        raise SecAggError(f"a share must be bytes, got {type(share).__name__}")
    if len(share) != SHARE_BYTES:
        raise SecAggError(f"malformed share: {len(share)} bytes, expected {SHARE_BYTES}")
    owner, x, kind, yb = _SHARE.unpack(bytes(share))
    y = int.from_bytes(yb, "big")
    if x == 0 or kind not in (MASK_KEY, SELF_SEED) or y >= PRIME:
        raise SecAggError(f"malformed share: x={x}, kind={kind}, y {'>=' if y >= PRIME else '<'} prime "
                          "(need x >= 1, kind 0 or 1, y < 2^521 - 1)")
    return owner, x, kind, y


def combine_shares(shares: Sequence[bytes], threshold: int, owner: int | None = None,
                   kind: int | None = None) -> bytes:
    """The 32-byte secret behind `shares` (Lagrange interpolation at 0 of the first `threshold`).

    SecAggError if fewer than `threshold` distinct shares are given, if any is malformed,
    if they belong to different owners or kinds (or not to `owner` / `kind` when given),
    or if the result is not a 32-byte secret.
    """
    parsed = [parse_share(s) for s in shares]
    if len({(o, k) for o, _, k, _ in parsed}) > 1:
        raise SecAggError("shares belong to different secrets (owner or kind differ)")
    if parsed and (owner is not None and parsed[0][0] != owner or kind is not None and parsed[0][2] != kind):
        raise SecAggError(f"shares are of client {parsed[0][0]}'s secret of kind {parsed[0][2]}, "
                          f"expected client {owner}'s of kind {kind}")
    xs = [x for _, x, _, _ in parsed]
    if len(set(xs)) != len(xs):
        raise SecAggError(f"duplicate share indices {sorted(x for x in set(xs) if xs.count(x) > 1)}")
    if len(parsed) < threshold:
        raise SecAggError(f"{len(parsed)} shares cannot reconstruct a secret shared with threshold "
                          f"{threshold}: need at least {threshold}")
    points = [(x, y) for _, x, _, y in parsed[:threshold]]
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * KEY_BYTES):
        raise SecAggError("shares reconstruct no 32-byte secret: at least one share is corrupt")
    return secret.to_bytes(KEY_BYTES, "big")


def recover_private_key(shares: Sequence[bytes], threshold: int, public_key: bytes,
                        owner: int | None = None) -> X25519PrivateKey:
    """A dropped client's X25519 key from survivors' shares, checked against its advertised public key."""
    key = X25519PrivateKey.from_private_bytes(combine_shares(shares, threshold, owner, MASK_KEY))
    if key.public_key().public_bytes_raw() != public_key:
        raise SecAggError("reconstructed key does not match the advertised public key: a share is corrupt")
    return key


# -- masks -------------------------------------------------------------------------------

def _check_modulus(modulus) -> int:
    if isinstance(modulus, bool) or not isinstance(modulus, numbers.Integral) or not (
            2 <= modulus <= 2 ** 64 and modulus & (modulus - 1) == 0):
        raise SecAggError(f"modulus={modulus!r} is not allowed: must be a power of two 2^k, 1 <= k <= 64")
    return int(modulus)


def _kdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _word(modulus: int):
    """Unsigned dtype the arithmetic mod `modulus` runs in: it wraps mod 2^32 or 2^64, multiples of it."""
    return np.uint32 if modulus <= 2 ** 32 else np.uint64


def _prg(key: bytes, size: int, modulus: int) -> np.ndarray:
    """`size` uniform residues mod `modulus` (a power of two): AES-256-CTR keystream, low k bits of each word."""
    word = _word(modulus)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    nbytes = np.dtype(word).itemsize * size
    buf = bytearray(nbytes + 15)  # update_into wants room for one more block
    enc.update_into(bytes(nbytes), buf)
    words = np.frombuffer(buf, dtype=np.dtype(word).newbyteorder("<"), count=size).astype(word, copy=False)
    return words & word(modulus - 1)


def _pair_key(private: X25519PrivateKey, public: bytes) -> bytes:
    return _kdf(private.exchange(X25519PublicKey.from_public_bytes(public)), b"fl_lib secagg pairwise mask")


class Party:
    """One party's secrets for one round: X25519 key s^SK, self-mask seed b, and a generator for its shares."""

    def __init__(self, seed: int, round: int, k: int):
        self.rng = numpy_generator(seed, round, k, Stream.SECAGG)
        # Simulation only: a deployment draws these from os.urandom.
        self.private = X25519PrivateKey.from_private_bytes(self.rng.bytes(KEY_BYTES))
        self.public = self.private.public_key().public_bytes_raw()
        self.b = self.rng.bytes(KEY_BYTES)

    @classmethod
    def restore(cls, private: bytes, b: bytes) -> "Party":
        """A party from its stored s^SK and b, in a later step of the round (a new message, a new process)."""
        party = cls.__new__(cls)
        party.private, party.b, party.rng = X25519PrivateKey.from_private_bytes(private), b, None
        party.public = party.private.public_key().public_bytes_raw()
        return party

    def share(self, num_shares: int, threshold: int, k: int) -> tuple[list[bytes], list[bytes]]:
        """ShareKeys: Shamir shares of s^SK and of b, share j for client j (drawn in this order from rng)."""
        return (split_secret(self.private.private_bytes_raw(), num_shares, threshold, self.rng, k, MASK_KEY),
                split_secret(self.b, num_shares, threshold, self.rng, k, SELF_SEED))

    def cipher_key(self) -> X25519PrivateKey:
        """A second X25519 key c^SK, drawn after the shares, that only encrypts shares in transit.

        Kept apart from s^SK: the server may reconstruct a dropped client's s^SK, and
        must not then be able to read the shares that client sent or received.
        """
        return X25519PrivateKey.from_private_bytes(self.rng.bytes(KEY_BYTES))

    def mask(self, x: np.ndarray, k: int, publics, modulus: int) -> np.ndarray:
        """y_k: x plus the self mask and the pairwise masks with every client in `publics` (a list, or {v: key})."""
        y = x + _prg(_kdf(self.b, b"fl_lib secagg self mask"), x.size, modulus)
        for v, pub in (publics.items() if isinstance(publics, dict) else enumerate(publics)):
            if v != k:
                m = _prg(_pair_key(self.private, pub), x.size, modulus)
                if k < v:  # unsigned arithmetic wraps mod 2^32 or 2^64, multiples of the modulus
                    y += m
                else:
                    y -= m
        y &= _word(modulus)(modulus - 1)
        return y


def _residues(codes: list, modulus: int) -> tuple[list[np.ndarray], tuple]:
    if not codes:
        raise SecAggError("masked_sum needs at least one client's codes")
    arrays = [np.asarray(c) for c in codes]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if not np.issubdtype(a.dtype, np.integer):
            raise SecAggError(f"client {i}: codes must be integers, got {a.dtype}")
        if a.shape != shape:
            raise SecAggError(f"client {i}: codes of shape {a.shape}, client 0 has {shape}")
    word = _word(modulus)
    # Casting a signed int to unsigned keeps its two's complement: x mod 2^64, then mod 2^k.
    return [a.reshape(-1).astype(np.uint64).astype(word) & word(modulus - 1) for a in arrays], shape


def to_residues(codes: np.ndarray, modulus: int) -> np.ndarray:
    """One client's integer codes as a flat vector of residues mod `modulus` (what Party.mask takes)."""
    return _residues([codes], _check_modulus(modulus))[0][0]


def masked_sum(codes: list[np.ndarray], modulus: int, seed: int, dropped=(), *, round: int = 0,
               threshold: int | None = None) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Run one round of secure aggregation; return (masked uploads, sum of the survivors' codes mod modulus).

    codes[k] is client k's integer array (signed codes are taken mod `modulus`, a power of
    two); clients in `dropped` share their keys and then drop before uploading. The first
    value is what the server receives, {client: masked array (uint32 when m <= 2^32, else
    uint64; uniform mod m)} for the survivors; the second is the unmasked total as uint64 residues in [0, m), equal to
    sum of the survivors' codes mod m (to_signed() recovers signed sums). threshold
    defaults to threshold_for(len(codes)); fewer survivors than it raise SecAggError.
    """
    modulus = _check_modulus(modulus)
    xs, shape = _residues(codes, modulus)
    n = len(xs)
    if n > MAX_CLIENTS:
        raise SecAggError(f"{n} clients: at most {MAX_CLIENTS} per round")
    t = threshold_for(n) if threshold is None else threshold
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 1 <= t <= n:
        raise SecAggError(f"threshold={t!r} is not allowed: must be an int in 1..{n} (number of clients)")
    gone = set()
    for d in dropped:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d < n:
            raise SecAggError(f"dropped client {d!r} is not one of the {n} clients 0..{n - 1}")
        gone.add(int(d))
    survivors = [u for u in range(n) if u not in gone]

    # AdvertiseKeys, then ShareKeys: share j of every secret goes to client j.
    clients = [Party(seed, round, k) for k in range(n)]
    publics = [c.public for c in clients]
    key_shares, seed_shares = zip(*[c.share(n, t, k) for k, c in enumerate(clients)])

    # MaskedInputCollection: only survivors upload.
    masked = {u: clients[u].mask(xs[u], u, publics, modulus) for u in survivors}

    # Unmasking: each survivor j sends its share of b_u for survivors u, of s_v^SK for dropped v.
    seeds = {u: [seed_shares[u][j] for j in survivors] for u in survivors}
    keys = {v: [key_shares[v][j] for j in survivors] for v in sorted(gone)}
    total = unmask_total(masked, seeds, keys, dict(enumerate(publics)), t, modulus)
    return {u: y.reshape(shape) for u, y in masked.items()}, total.astype(np.uint64).reshape(shape)


def unmask_total(masked: dict[int, np.ndarray], seed_shares: dict[int, list[bytes]],
                 key_shares: dict[int, list[bytes]], publics: dict[int, bytes], threshold: int,
                 modulus: int) -> np.ndarray:
    """The server's Unmasking step: the survivors' sum mod `modulus` from their masked vectors.

    masked: {survivor u: y_u}; seed_shares: {survivor u: shares of b_u}; key_shares:
    {dropped v: shares of s_v^SK}; publics: {client: mask public key} of every client
    the survivors masked with. Removes each survivor's self mask, and the pairwise
    masks the survivors still hold with each dropped client. SecAggError with fewer
    than `threshold` survivors or shares.
    """
    survivors = sorted(masked)
    if len(survivors) < threshold:
        raise SecAggError(f"only {len(survivors)} of {len(publics)} clients survived; unmasking needs the shares of "
                          f"at least threshold={threshold}")
    size = masked[survivors[0]].size
    total = np.zeros(size, dtype=_word(modulus))
    for u in survivors:
        total += masked[u].reshape(-1)
        b = combine_shares(seed_shares[u], threshold, u, SELF_SEED)
        total -= _prg(_kdf(b, b"fl_lib secagg self mask"), size, modulus)
    for v in sorted(key_shares):
        key = recover_private_key(key_shares[v], threshold, publics[v], v)
        for u in survivors:  # u added +PRG(s_uv) if u < v, else -PRG(s_uv): take it back out
            m = _prg(_pair_key(key, publics[u]), size, modulus)
            if u < v:
                total -= m
            else:
                total += m
    total &= _word(modulus)(modulus - 1)
    return total


# -- the protocol's messages (what crosses a network: fl_lib.runtime.flower) -------------------

def _share_cipher(private: X25519PrivateKey, public: bytes, sender: int, receiver: int, round: int):
    """AES-256-GCM keyed by the pair's cipher keys; the nonce and associated data name sender, receiver, round."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _kdf(private.exchange(X25519PublicKey.from_public_bytes(public)), b"fl_lib secagg share cipher")
    nonce = struct.pack(">IIHH", round, 0, sender, receiver)  # u->v and v->u differ: no nonce is used twice
    return AESGCM(key), nonce


def seal_shares(private: X25519PrivateKey, public: bytes, sender: int, receiver: int, round: int,
                key_share: bytes, seed_share: bytes) -> bytes:
    """The sender's two shares for `receiver`, encrypted so that the server routing them cannot read them."""
    aead, nonce = _share_cipher(private, public, sender, receiver, round)
    return aead.encrypt(nonce, key_share + seed_share, nonce)


def open_shares(private: X25519PrivateKey, public: bytes, sender: int, receiver: int, round: int,
                sealed: bytes) -> tuple[bytes, bytes]:
    """(key share, seed share) from `sender`; SecAggError if they were altered or are not shares of its secrets."""
    from cryptography.exceptions import InvalidTag

    aead, nonce = _share_cipher(private, public, sender, receiver, round)
    try:
        plain = aead.decrypt(nonce, bytes(sealed), nonce)
    except InvalidTag:
        raise SecAggError(f"client {sender}'s shares for client {receiver} fail authentication: "
                          "altered on the way") from None
    key_share, seed_share = plain[:SHARE_BYTES], plain[SHARE_BYTES:]
    for share, kind in ((key_share, MASK_KEY), (seed_share, SELF_SEED)):
        owner, x, got, _ = parse_share(share)
        if (owner, x, got) != (sender, receiver + 1, kind):
            raise SecAggError(f"client {sender} sent client {receiver} a share of client {owner}'s secret "
                              f"(x={x}, kind={got}): expected its own, x={receiver + 1}, kind={kind}")
    return key_share, seed_share


def pack_residues(y: np.ndarray, k: int) -> bytes:
    """Residues mod 2^k at exactly k bits each: ceil(len * k / 8) bytes, what masked_upload_bytes counts."""
    words = np.ascontiguousarray(y.reshape(-1).astype(np.uint64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").reshape(len(words), 64)
    return np.packbits(bits[:, :k].reshape(-1), bitorder="little").tobytes()


def unpack_residues(data: bytes, size: int, k: int, modulus: int) -> np.ndarray:
    """Inverse of pack_residues, as the word dtype the arithmetic mod `modulus` runs in."""
    if len(data) != math.ceil(size * k / 8):
        raise SecAggError(f"masked vector of {len(data)} bytes: {size} values at {k} bits need "
                          f"{math.ceil(size * k / 8)}")
    bits = np.zeros((size, 64), np.uint8)
    bits[:, :k] = np.unpackbits(np.frombuffer(data, np.uint8), count=size * k, bitorder="little").reshape(size, k)
    return np.packbits(bits.reshape(-1), bitorder="little").view("<u8").astype(_word(modulus))


def to_signed(residues: np.ndarray, modulus: int) -> np.ndarray:
    """Residues mod `modulus` as int64 in [-modulus/2, modulus/2): the signed sums they stand for."""
    modulus = _check_modulus(modulus)
    r = np.asarray(residues, dtype=np.uint64)
    # r - m wraps mod 2^64 to the two's complement of the negative value (m = 2^64 subtracts 0).
    return np.where(r >= np.uint64(modulus // 2), r - np.uint64(modulus % 2 ** 64), r).view(np.int64)


# -- the shared-scale quantizer ------------------------------------------------------------

def modulus_bits(bits: int, total_weight: int) -> int:
    """Smallest k with 2^k as modulus such that codes weighted by integers summing to W cannot wrap.

    |sum_k w_k q_k| <= W q_max, and a centred residue mod 2^k holds every integer of
    magnitude < 2^(k-1): k = bit_length(W q_max) + 1, which is at most
    bits + ceil(log2 W) (the codes' sign bit is already one of their `bits`).
    """
    check_bits(bits, allow_float=False)
    if isinstance(total_weight, bool) or not isinstance(total_weight, numbers.Integral) or total_weight < 1:
        raise SecAggError(f"total_weight={total_weight!r} is not allowed: must be an int >= 1")
    k = (total_weight * q_max(bits)).bit_length() + 1
    if k > 64:
        raise SecAggError(f"{bits}-bit codes weighted by a total of {total_weight} need {k} > 64 bits: "
                          "use fewer bits or smaller weights")
    return k


def masking_overhead_bits(bits: int, num_clients: int, total_weight: int | None = None) -> int:
    """Extra bits per parameter that masking costs over a plain `bits`-bit upload.

    Masked values are uniform mod 2^k, so each costs k = modulus_bits(bits, W) bits with
    W = num_clients (uniform weights) or the round's total integer weight sum n_k.
    """
    return modulus_bits(bits, num_clients if total_weight is None else total_weight) - bits


MIN_BOUND = 0.01  # the smallest channel bound: a channel that is all zero (a fresh bias) must still be able to grow


def channel_bound(reference: dict[str, torch.Tensor], margin: float = 1.0,
                  floor: float = MIN_BOUND) -> dict[str, torch.Tensor]:
    """A public per-channel bound margin * max(max_i |r_ci|, floor) from a model every client has (e.g. the global one).

    Without the floor a channel that is zero in the reference (zero-initialized
    biases) would get scale 0, so its codes would be 0 and it could never move.
    """
    out = {}
    for name, r in reference.items():
        if torch.is_tensor(r) and r.is_floating_point():
            c = num_channels(r.shape)
            x = r.detach().float().reshape(c, -1)
            peak = x.abs().amax(dim=1) if x.numel() else x.new_zeros(c)
            out[name] = peak.clamp_min(float(floor)) * float(margin)
    return out


def _scale(name: str, w: torch.Tensor, bound, qm: int) -> torch.Tensor:
    c = num_channels(w.shape)
    if isinstance(bound, dict):
        if name not in bound:
            raise ConfigError(f"bound has no entry for tensor {name!r}")
        b = bound[name]
    else:
        b = bound
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    if b.numel() == 1:
        b = b.expand(c)
    if b.numel() != c:
        raise ConfigError(f"bound for {name!r} has {b.numel()} values; the tensor has {c} channels")
    if not bool(torch.isfinite(b).all()) or bool((b < 0).any()):
        raise ConfigError(f"bound for {name!r} must be finite and >= 0")
    return (b / qm).float()


def shared_scale_codes(update: dict[str, torch.Tensor], bound, bits: int
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Codes q_c = clip(round(w_c / s_c), q_min, q_max) with public s_c = B_c / q_max; return (codes, scales).

    `bound` is a float (one B for every channel of every tensor, e.g. a clip value) or a
    dict of per-channel bounds (shape (C,) or scalar per tensor, e.g. channel_bound()).
    Every client with the same bound gets the same scales, so their codes can be summed.
    Only float tensors are coded; a channel with bound 0 gets scale 0 and codes 0.
    """
    check_bits(bits, allow_float=False)
    qm = q_max(bits)
    codes, scales = {}, {}
    for name, w in update.items():
        if not (torch.is_tensor(w) and w.is_floating_point()):
            continue
        s = _scale(name, w, bound, qm)
        c = num_channels(w.shape)
        x = w.detach().cpu().float().reshape(c, -1)
        if not bool(torch.isfinite(x).all()):
            raise CodecError(f"{name}: tensor has non-finite values (nan or inf); cannot quantize")
        ratio = x.double() / torch.where(s > 0, s, torch.ones_like(s)).double()[:, None]
        q = torch.round(ratio).clamp_(-qm, qm) * (s > 0)[:, None]
        codes[name] = q.to(code_dtype(bits)).reshape(w.shape)
        scales[name] = s
    return codes, scales


def decode_sum(total_codes: dict, scales: dict[str, torch.Tensor], total_weight) -> dict[str, torch.Tensor]:
    """Mean from summed codes: w_c = s_c * total_c / W (float32); W = number of clients, or sum of weights."""
    if not total_weight > 0:
        raise SecAggError(f"total_weight={total_weight!r}: must be > 0")
    out = {}
    for name, total in total_codes.items():
        t = torch.as_tensor(np.asarray(total)) if not torch.is_tensor(total) else total
        c = num_channels(t.shape)
        s = scales[name].double()[:, None]
        out[name] = (t.reshape(c, -1).double() * s / float(total_weight)).float().reshape(t.shape)
    return out


def _integer_weights(weights, n: int) -> list[int]:
    if weights is None:
        return [1] * n
    if len(weights) != n:
        raise SecAggError(f"need one weight per update: got {n} updates, {len(weights)} weights")
    out = []
    for w in weights:
        w = w.item() if torch.is_tensor(w) else w
        if (isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w)
                or w != int(w) or w < 1):
            raise SecAggError(f"weight={w!r} is not allowed: secure aggregation weights must be ints >= 1 "
                              "(sample counts n_k)")
        out.append(int(w))
    g = math.gcd(*out)  # same weighted mean, smaller sums: equal n_k become weights of 1
    return [w // g for w in out]


def _flat_weighted(updates, weights, bits, bound):
    """Per client: its weighted codes n_k q_k, flattened over float tensors, then n_k itself (int64)."""
    flats, scales, layout = [], None, None
    for u, w in zip(updates, weights):
        codes, s = shared_scale_codes(u, bound, bits)
        if scales is None:
            scales, layout = s, [(name, q.shape) for name, q in codes.items()]
        parts = [codes[name].reshape(-1).to(torch.int64).numpy() * w for name, _ in layout]
        flats.append(np.concatenate(parts + [np.array([w], dtype=np.int64)]))
    return flats, scales, layout


def weighted_codes(values: dict, weight: int, bits: int, bound) -> np.ndarray:
    """One client's vector to mask: its codes on the shared grid times its integer weight, then the weight."""
    return _flat_weighted([values], [weight], bits, bound)[0][0]


def shared_layout(like: dict, bits: int, bound) -> tuple[dict, list]:
    """(scales, layout) of the shared grid for state dicts shaped like `like`: public, so the server has them."""
    _, scales, layout = _flat_weighted([like], [1], bits, bound)
    return scales, layout


def decode_flat(signed: np.ndarray, scales: dict, layout: list) -> dict[str, torch.Tensor]:
    """The weighted mean (float32 tensors) from the signed sum of weighted_codes vectors."""
    weight = int(signed[-1])
    totals, at = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        totals[name] = torch.from_numpy(signed[at:at + size].copy()).reshape(shape)
        at += size
    return decode_sum(totals, scales, weight)


def _finish(signed, scales, layout, updates, survivors):
    mean = decode_flat(signed, scales, layout)
    first = updates[survivors[0]]
    return {name: mean[name].to(v.dtype) if name in mean else v.detach().clone() for name, v in first.items()}


def shared_scale_mean(updates: list[dict], weights, bits: int, bound, dropped=()) -> dict[str, torch.Tensor]:
    """The same weighted mean as secure_mean, computed in the clear (no masks): its reference."""
    weights = _integer_weights(weights, len(updates))
    flats, scales, layout = _flat_weighted(updates, weights, bits, bound)
    survivors = [u for u in range(len(updates)) if u not in set(dropped)]
    if not survivors:
        raise SecAggError("every client dropped: nothing to average")
    signed = np.sum([flats[u] for u in survivors], axis=0)
    return _finish(signed, scales, layout, updates, survivors)


def masked_upload_bytes(num_params: int, bits: int, num_clients: int, total_weight: int | None = None, *,
                        rotated: bool = False) -> int:
    """Bytes one client sends in a round: masked vector (k bits per value, + its weight), key and shares.

    The vector holds num_params values and the weight, bit-packed at k = modulus_bits bits.
    rotated=True is DP's path (dp_quant.py): the vector is the rotated update padded to
    2^ceil(log2 num_params) values, with uniform weights and no weight slot.
    Protocol traffic: its X25519 public key (32 B), two Shamir shares for each other
    client (SHARE_BYTES each; the real protocol adds AEAD framing), and in the unmasking
    step one share for each client. The scales are public (from the bound): not sent.
    """
    if rotated and total_weight is not None:
        raise SecAggError(f"total_weight={total_weight!r}: the rotated (DP) upload has uniform weights; pass None")
    k = modulus_bits(bits, num_clients if total_weight is None else total_weight)
    values = 1 << max(num_params - 1, 0).bit_length() if rotated else num_params + 1
    vector = math.ceil(values * k / 8)
    return vector + KEY_BYTES + 2 * (num_clients - 1) * SHARE_BYTES + num_clients * SHARE_BYTES


def received_bytes(num_clients: int) -> int:
    """What a client receives in a round besides the model: n - 1 public keys and 2(n - 1) shares.

    The server forwards every other client's advertised X25519 key (AdvertiseKeys) and
    the shares of their mask key and self-mask seed addressed to this client (ShareKeys).
    What it sends (its key, its shares, its masked vector) is in masked_upload_bytes.
    The list of survivors the server sends before unmasking (2 B per client id) is not counted.
    """
    return (num_clients - 1) * (KEY_BYTES + 2 * SHARE_BYTES)


def secure_mean(updates: list[dict], weights, bits: int, bound, seed: int, round: int, dropped=()
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Shared-scale quantize, mask, sum, unmask, dequantize: FedAvg's weighted mean of `updates`.

    weights are the clients' integer sample counts n_k (None: uniform). Clients multiply
    codes by n_k and send n_k as one more coordinate, so the result is sum n_k w_hat_k /
    sum n_k over the survivors, bit for bit shared_scale_mean(). Non-float entries are
    taken from the first survivor. Returns (mean, upload bytes per client).
    """
    if not updates:
        raise SecAggError("secure_mean needs at least one update")
    weights = _integer_weights(weights, len(updates))
    flats, scales, layout = _flat_weighted(updates, weights, bits, bound)
    k = modulus_bits(bits, sum(weights))  # fixed before anyone drops: the survivors' weight is smaller
    _, total = masked_sum(flats, 2 ** k, seed, dropped, round=round)
    survivors = [u for u in range(len(updates)) if u not in set(dropped)]
    signed = to_signed(total, 2 ** k)
    num_params = sum(math.prod(shape) for _, shape in layout)
    return (_finish(signed, scales, layout, updates, survivors),
            masked_upload_bytes(num_params, bits, len(updates), sum(weights)))

