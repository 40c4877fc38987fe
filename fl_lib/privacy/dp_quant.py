"""Quantizing clipped updates for DP under secure aggregation: a random rotation, a fine shared grid and
conditional stochastic rounding (Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML; KLS below).

Why not the plain shared grid. Secure aggregation sums integer codes, so every client rounds its
clipped update (norm <= S, d values) onto one public grid. With the clip as the bound, step
s = S / q_max (secagg.shared_scale_codes), two things break:
  * the update vanishes: its coordinates are about S / sqrt(d), a fraction q_max / sqrt(d) of a
    step (INT8, d = 122,570: 0.36), so most of them round to 0 and the aggregate loses them;
  * the sensitivity grows: a coordinate moves by up to s / 2, so ||round(x)|| <= S + s sqrt(d) / 2,
    not the S the noise was sized for (a value just over half a step doubles).
Clipping to S - s sqrt(d) / 2 instead would restore the sensitivity but shrinks the update further.

What a client does here, with x its update (its float tensors as one vector) clipped to S:

    1. pad x with zeros to n = 2^ceil(log2 d) values;
    2. y = H D x / gamma: D = diag(signs), signs in {-1, +1}^n public and fresh each round (the
       server's Stream.SECAGG draw, the same for every client), H the orthonormal n x n
       Walsh-Hadamard matrix (symmetric, H H = I); ||y|| = ||x|| / gamma <= C := S / gamma;
    3. round y to integers z: stochastically (up with probability equal to the fractional part,
       E z = y), redrawn until ||z|| <= B (conditional rounding, KLS Algorithm 1), or to nearest;
       then clamp to [-q_max, q_max] (which only shortens z);
    4. mask z and sum mod 2^k over the round's clients (secagg.masked_sum, k = modulus_bits(bits, N)).
The server unmasks sum_k z_k and decodes the sum of the updates as (D H gamma sum_k z_k)[:d].

Flattening (KLS's Lemma on the randomized Hadamard transform). y_i = sum_j H_ij D_j x_j / gamma with
|H_ij| = 1 / sqrt(n) is a sum of independent symmetric terms, so by Hoeffding

    P(|y_i| >= t) <= 2 exp(-t^2 n / (2 C^2))                                                   (F)

every coordinate is about C / sqrt(n), whatever the shape of x: the rotation spreads the norm evenly.

The scale gamma = S / C. C (the clip in grid steps) is as large as the codes' range allows: (F) at
t = q_max with a union bound over the n coordinates gives

    P(max_i |y_i| > q_max) <= 2 n exp(-q_max^2 n / (2 C^2)) = beta_f  for
    C = q_max sqrt(n / (2 ln(2 n / beta_f)))                                                   (G)

with beta_f = FLATTEN_BETA per upload (C is at least q_max: |y_i| <= ||y|| <= C then never
clamps). A coordinate with |y_i| <= q_max rounds into [-q_max, q_max]; a rarer one is clamped.
Codes in [-q_max, q_max] from N clients sum to at most N q_max < 2^(k - 1): the sum mod 2^k never
wraps, deterministically (secagg.modulus_bits). KLS size gamma for a modulus that holds the sum
(and their noise) with high probability; here every client's codes keep the `bits` they are given,
as on the path without DP, so the masked upload costs k = bits + ceil(log2 N) bits a value.

Sensitivity after rounding (KLS Theorem 1, eq. (2); the min is their Proposition 22). For ||y|| <= C,
stochastic rounding gives ||z||^2 <= C^2 + n/4 + sqrt(2 ln(1/beta)) (C + sqrt(n)/2) with probability
>= 1 - beta, and ||z|| <= C + sqrt(n) always. Conditional rounding redraws until

    ||z|| <= B = min( sqrt(C^2 + n/4 + sqrt(2 ln(1/beta)) (C + sqrt(n)/2)),  C + sqrt(n) )     (B)

with beta = ROUNDING_BETA = exp(-1/2), KLS's default (at most 1 / (1 - beta) = 2.5 draws on
average). Nearest rounding moves each coordinate by at most 1/2, so ||z|| <= B = C + sqrt(n)/2
always (B'). Either way every decoded upload has norm <= Delta = gamma B > S, and Delta is the
sensitivity of the sum. Who adds the noise: the server, to the unmasked sum (central DP on the
released model, as in dp.py; KLS's clients add discrete Gaussian noise instead, not done here),
with std z Delta, not z S (DPGrid.noise_std): so the accountant's epsilon at noise multiplier z
holds for the rounded uploads.

Error. Rounding moves coordinate i by e_i with E e_i^2 = p (1 - p) <= 1/4 (stochastic) or
|e_i| <= 1/2 (nearest), so one upload at the clip has relative error at most

    rho = gamma sqrt(n) / (2 S) = sqrt(n) / (2 C) = sqrt(ln(2 n / beta_f) / 2) / q_max         (E)

(RMS); it depends on d only through sqrt(ln n): INT8 0.03, INT4 0.52 at d = 122,570. The N
clients' errors are independent, so the aggregate's relative error is at most rho whenever the
sum's norm is at least sqrt(N) S (orthogonal or more aligned updates at the clip).

Refusal. dp_grid refuses rho > MAX_ERROR = 1: the rounding noise of an upload would then be larger
than the upload, and the noise for the sensitivity would grow by up to 1.4x (stochastic, (B)) or 2x
(nearest, (B')). Below it the rounding noise is zero-mean (nearest: up to the fresh rotation) and
averages out over clients and rounds as the DP noise does, unlike the plain grid's deterministic
rounding to 0, which deletes the update (its relative error is a bias).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .dp import clip_update
from ..core.errors import ConfigError, FLError
from ..core.quant import check_bits, check_rounding, q_max
from ..core.rng import SERVER, Stream, numpy_generator
from .secagg import SecAggError, masked_sum, masked_upload_bytes, modulus_bits, secure_mean, to_signed

FLATTEN_BETA = 1e-6  # beta_f of (G): probability that an upload at the clip has any coordinate clamped
ROUNDING_BETA = math.exp(-0.5)  # beta of (B): KLS's default; sqrt(2 ln(1/beta)) = 1
MAX_ERROR = 1.0  # the largest rho of (E) accepted: rounding noise as large as the update itself
MAX_DRAWS = 64  # conditional rounding fails a draw with probability <= beta: 64 failures is ~1e-14


def padded_size(num_params: int) -> int:
    """n = 2^ceil(log2 d): the length the Walsh-Hadamard transform needs."""
    return 1 << max(int(num_params) - 1, 0).bit_length()


@dataclass(frozen=True)
class DPGrid:
    """The public grid of one model size, bit width, clip and rounding: what all clients and the server share."""

    num_params: int  # d, the update's float values
    size: int  # n = 2^ceil(log2 d), the rotated vector's length
    bits: int  # codes lie in [-q_max, q_max]
    clip: float  # S
    rounding: str  # stochastic (conditional, (B)) or nearest ((B'))
    clip_steps: float  # C = S / gamma, from (G)
    norm_bound: float  # B: every upload's codes have ||z|| <= B

    @property
    def step(self) -> float:
        """gamma, the grid step in the update's units."""
        return self.clip / self.clip_steps

    @property
    def sensitivity(self) -> float:
        """Delta = gamma B: the largest norm of a decoded upload, what the noise must be sized for (> clip)."""
        return self.step * self.norm_bound

    def noise_std(self, noise_multiplier: float) -> float:
        """Std of the server's Gaussian noise on the sum for noise multiplier z: z Delta."""
        return float(noise_multiplier) * self.sensitivity

    @property
    def error_bound(self) -> float:
        """rho of (E): RMS relative rounding error of one upload at the clip."""
        return math.sqrt(self.size) / (2 * self.clip_steps)

    @property
    def clamp_probability(self) -> float:
        """Bound (G) on the chance that an upload at the clip has a coordinate clamped (0 when C = q_max)."""
        qm = q_max(self.bits)
        if self.clip_steps <= qm:
            return 0.0
        return min(1.0, 2 * self.size * math.exp(-qm ** 2 * self.size / (2 * self.clip_steps ** 2)))

    def upload_bytes(self, num_clients: int) -> int:
        """Bytes one client sends in a round of `num_clients`: n values at k bits, its key and its shares."""
        return masked_upload_bytes(self.num_params, self.bits, num_clients, rotated=True)


def _clip_steps(size: int, bits: int) -> float:
    """C of (G): q_max sqrt(n / (2 ln(2n / beta_f))), and never below q_max."""
    return q_max(bits) * max(1.0, math.sqrt(size / (2 * math.log(2 * size / FLATTEN_BETA))))


def _norm_bound(c: float, size: int, rounding: str) -> float:
    if rounding == "nearest":
        return c + math.sqrt(size) / 2  # (B')
    slack = math.sqrt(2 * math.log(1 / ROUNDING_BETA))
    return min(math.sqrt(c * c + size / 4 + slack * (c + math.sqrt(size) / 2)), c + math.sqrt(size))  # (B)


def dp_grid(num_params: int, bits: int, clip: float, rounding: str = "stochastic") -> DPGrid:
    """The grid for `num_params` values at `bits` clipped to `clip`; ConfigError if rounding would swamp the update."""
    check_bits(bits, allow_float=False)
    check_rounding(rounding)
    if isinstance(num_params, bool) or not isinstance(num_params, numbers.Integral) or num_params < 1:
        raise ConfigError(f"num_params={num_params!r} is not allowed: must be an int >= 1")
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"dp_clip={clip!r} is not allowed: must be a float > 0")
    size = padded_size(num_params)
    c = _clip_steps(size, bits)
    grid = DPGrid(int(num_params), size, int(bits), float(clip), rounding, c, _norm_bound(c, size, rounding))
    if grid.error_bound > MAX_ERROR:
        ok = [b for b in range(bits + 1, 17) if math.sqrt(size) / (2 * _clip_steps(size, b)) <= MAX_ERROR]
        raise ConfigError(f"bits={bits} with dp_clip and secure_aggregation would lose the update of "
                          f"{num_params:,} parameters: rounding noise {grid.error_bound:.2f} times the clipped "
                          f"update (at most {MAX_ERROR:g}); use bits >= {ok[0] if ok else 16}")
    return grid


def grid_for(cfg, num_params: int) -> DPGrid | None:
    """The grid of a run (a Config) with DP under secure aggregation, else None; ConfigError where it is refused."""
    if not (cfg.secure_aggregation and cfg.dp_clip > 0):
        return None
    return dp_grid(num_params, cfg.bits, cfg.dp_clip, cfg.rounding)


# -- the rotation -----------------------------------------------------------------------

def hadamard(x: np.ndarray) -> np.ndarray:
    """H x for the orthonormal Walsh-Hadamard matrix H (Sylvester order, symmetric, H H = I), in O(n log n)."""
    y = np.array(x, dtype=np.float64).reshape(-1)  # a copy: the butterflies below work in place
    n = y.size
    if n == 0 or n & (n - 1):
        raise ValueError(f"hadamard needs a length that is a power of two, got {n}")
    h = 1
    while h < n:  # one butterfly per level: (a, b) -> (a + b, a - b) on blocks of 2h
        v = y.reshape(-1, 2, h)
        a = v[:, 0, :].copy()
        v[:, 0, :] += v[:, 1, :]
        v[:, 1, :] = a - v[:, 1, :]
        h *= 2
    return y / math.sqrt(n)


def rotation_signs(seed: int, round: int, size: int) -> np.ndarray:
    """The round's public diagonal D (float64 +-1): the server's Stream.SECAGG draw, shared by every client."""
    return numpy_generator(seed, round, SERVER, Stream.SECAGG).integers(0, 2, size=size).astype(np.float64) * 2 - 1


# -- one client's codes, and the server's decoding ----------------------------------------

def encode(x, grid: DPGrid, signs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Client side, steps 1-3: codes z (int64, n values) of update x with ||z|| <= B; rng for stochastic rounding."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != grid.num_params:
        raise ConfigError(f"update of {x.size} values, the grid is for {grid.num_params}")
    norm = float(np.linalg.norm(x))
    if not math.isfinite(norm):
        raise ConfigError(f"cannot quantize an update whose norm is {norm} (it holds nan or inf)")
    if norm > grid.clip:  # the engine clips in float32; this makes ||x|| <= S hold in float64 too
        x = x * (grid.clip / norm)
    padded = np.zeros(grid.size)
    padded[:grid.num_params] = x
    y = hadamard(padded * signs) / grid.step  # ||y|| <= C
    qm = q_max(grid.bits)
    limit = math.floor(grid.norm_bound ** 2)  # squared norms of integer codes are integers: compare exactly
    if grid.rounding == "nearest":
        z = np.clip(np.rint(y), -qm, qm).astype(np.int64)
        if int(np.dot(z, z)) > limit:  # (B') holds by the triangle inequality: this would be a bug
            raise FLError(f"nearest rounding broke its bound: ||z||^2 = {int(np.dot(z, z))} > {limit}")
        return z
    if rng is None:
        raise ConfigError("stochastic rounding needs a generator (the client's Stream.ROUNDING)")
    low = np.floor(y)
    frac = y - low
    for _ in range(MAX_DRAWS):  # conditional rounding: redraw the whole vector until (B) holds
        z = np.clip(low + (rng.random(grid.size) < frac), -qm, qm).astype(np.int64)
        if int(np.dot(z, z)) <= limit:
            return z
    raise FLError(f"conditional rounding failed {MAX_DRAWS} draws in a row (each fails with probability "
                  f"<= {ROUNDING_BETA:.2f}): is the update clipped to {grid.clip}?")


def decode(total, grid: DPGrid, signs: np.ndarray) -> np.ndarray:
    """Server side: the sum of the decoded uploads (D H gamma sum_k z_k)[:d] (float64) from the summed codes."""
    return (signs * hadamard(np.asarray(total, dtype=np.int64).astype(np.float64) * grid.step))[:grid.num_params]


def upload_error(x, z: np.ndarray, grid: DPGrid, signs: np.ndarray) -> float:
    """Relative error ||decode(z) - x|| / ||x|| of one client's codes (0 when both are 0, inf when only x is)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    diff, norm = float(np.linalg.norm(decode(z, grid, signs) - x)), float(np.linalg.norm(x))
    return (0.0 if diff == 0 else math.inf) if norm == 0 else diff / norm


def client_codes(flats: list, grid: DPGrid, seed: int, round: int, clients=None, dropped=()) -> list[np.ndarray]:
    """Every client's codes (zeros for `dropped`, who upload nothing); client k rounds with its Stream.ROUNDING."""
    clients = list(range(len(flats))) if clients is None else list(clients)
    if len(clients) != len(flats):
        raise ConfigError(f"need one client id per update: got {len(flats)} updates, {len(clients)} ids")
    signs = rotation_signs(seed, round, grid.size)
    gone = set(dropped)
    return [np.zeros(grid.size, dtype=np.int64) if i in gone
            else encode(x, grid, signs, numpy_generator(seed, round, k, Stream.ROUNDING))
            for i, (x, k) in enumerate(zip(flats, clients))]


def masked_total(codes: list[np.ndarray], grid: DPGrid, seed: int, round: int, dropped=()) -> np.ndarray:
    """Step 4 and the decoding: mask, sum mod 2^k, unmask (secagg.masked_sum), decode the survivors' sum."""
    modulus = 2 ** modulus_bits(grid.bits, len(codes))  # N q_max < 2^(k-1): never wraps
    _, total = masked_sum(codes, modulus, seed, dropped, round=round)
    return decode(to_signed(total, modulus), grid, rotation_signs(seed, round, grid.size))


def clear_total(codes: list[np.ndarray], grid: DPGrid, seed: int, round: int, dropped=()) -> np.ndarray:
    """masked_total computed in the clear (plain integer sum, no masks): its reference, bit for bit."""
    kept = [z for i, z in enumerate(codes) if i not in set(dropped)]
    if not kept:
        raise SecAggError("every client dropped: nothing to sum")
    total = np.sum(kept, axis=0, dtype=np.int64)
    return decode(total, grid, rotation_signs(seed, round, grid.size))


# -- state dicts <-> one vector -------------------------------------------------------------

def flatten(update) -> np.ndarray:
    """The float tensors of a state dict (in its order), or one tensor, as one float64 vector."""
    if torch.is_tensor(update):
        return update.detach().cpu().double().reshape(-1).numpy()
    parts = [v.detach().cpu().double().reshape(-1) for v in update.values()
             if torch.is_tensor(v) and v.is_floating_point()]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def unflatten(vector: np.ndarray, like: dict) -> dict[str, torch.Tensor]:
    """`vector` cut into float32 tensors shaped like the float tensors of `like` (on the CPU)."""
    out, at = {}, 0
    for name, v in like.items():
        if torch.is_tensor(v) and v.is_floating_point():
            out[name] = torch.from_numpy(np.ascontiguousarray(vector[at:at + v.numel()])).float().reshape(v.shape)
            at += v.numel()
    return out


def dp_secagg_error(updates: list, bits: int, clip: float, *, rounding: str = "stochastic", rotate: bool = True,
                    seed: int = 0, round: int = 1) -> float:
    """Relative error ||mean_hat - mean|| / ||mean|| of the noise-free mean of `updates` clipped to `clip`.

    mean_hat goes through the real path: this module's codes, masked, summed mod 2^k,
    unmasked and decoded. rotate=False measures the plain shared grid that DP under secure
    aggregation used before (step clip / q_max, nearest, secagg.secure_mean). `updates` are
    state dicts or tensors; ConfigError where dp_grid refuses the setting.
    """
    dicts = [u if isinstance(u, dict) else {"update": u} for u in updates]
    clipped = [clip_update({n: v.detach().cpu().float() for n, v in u.items()
                            if torch.is_tensor(v) and v.is_floating_point()}, clip)[0] for u in dicts]
    flats = [flatten(c) for c in clipped]
    mean = np.mean(flats, axis=0)
    if rotate:
        grid = dp_grid(len(mean), bits, clip, rounding)
        mean_hat = masked_total(client_codes(flats, grid, seed, round), grid, seed, round) / len(flats)
    else:
        mean_hat = flatten(secure_mean(clipped, None, bits, clip, seed, round)[0])
    norm = float(np.linalg.norm(mean))
    return float(np.linalg.norm(mean_hat - mean)) / norm if norm > 0 else 0.0
