"""User-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): clip each client's update, add Gaussian noise to the sum, divide by
a fixed denominator, and account the privacy spent with Opacus's RDP accountant.

With S = clip and z = noise_multiplier, one round is

    Delta_k~   = Delta_k * min(1, S / ||Delta_k||_2)                 (clip, all tensors as one vector)
    Delta      = ( sum_k w_k Delta_k~  +  N(0, (z S)^2 I) ) / (q W)    (noise the sum, fixed denominator)

where q = clients per round / num_clients and W = sum of w_k over *all* clients. The
denominator is fixed (it does not depend on who was sampled), so one client's presence
changes the noised sum by at most S: that is the sensitivity the noise z S is scaled to.

Weights. We use uniform weights w_k = 1 by default: then q W = q K is the expected number
of sampled clients. McMahan 2018's bounded weights w_k = min(n_k / n_hat, 1) are supported
by passing `weights` (each in [0, 1], so the sensitivity stays S) and `expected_clients =
q * W`. FedAvg's n_k / n cannot be used as is: a client with large n_k would have
unbounded influence, so the noise would have to grow with it.

Sampling and accounting. The bound only holds for the sampling the engine really did,
so a DP run samples in one of two ways (Config.dp_sampling) and accounts for that one:

- "poisson" (default; McMahan 2018, Algorithm 1): every client joins round t
  independently with probability q = C, so the number sampled varies (it is the
  `sampled_clients` column of metrics.csv; it can be 0, and then the round's update
  is the noise alone). Neighbouring federations differ by adding or removing one
  client, whose clipped update moves the noised sum by at most S: the sampled
  Gaussian mechanism with noise multiplier z, accounted by Opacus's RDPAccountant
  (`epsilon`, `epsilon_per_round`), which assumes exactly this sampling.
- "fixed": exactly m = max(round(C K), 1) clients without replacement, as in runs
  without DP. The denominator is m. With a fixed sample size, adding a client can
  push another one out, so the natural relation is replace-one: one client's data
  swapped for another's moves the sum by up to 2S, so the noise std z S is a
  multiplier of z / 2 on that sensitivity. Accounted with dp-accounting's RDP
  accountant for sampling without replacement (Wang, Balle and Kasiviswanathan 2019,
  Theorem 27; `fixed_size_epsilon_per_round`). The resulting epsilon is several times
  larger than the Poisson one at the same q and z (at q = 0.1, z = 1, 100 rounds,
  delta = 1e-5: 7.9 for Poisson against 84 here), and a replace-one epsilon is not
  directly comparable with an add/remove one.

An earlier version sampled a fixed number of clients and reported the Poisson bound,
which is no guarantee for what it did: by the bound above, about 10 times too small at
q = 0.1, z = 1, 100 rounds (7.9 against 84) and at q = 0.01, z = 1, 1,000 rounds (2.1
against 21).

Uploads of weights. DP clips and noises the *update* Delta_k = w_k - w_global. With
upload="delta" the client sends Delta_k (its encoding is taken against w_global). With
upload="weights" the client sends w_k, and the server forms Delta_k = w_k - w_global
itself, subtracting the global model it broadcast that round, then clips and noises as
above. The privacy guarantee is the same, because the noise is added by the server after
clipping; but this is central DP: a server that sees w_k (or Delta_k) before clipping sees
the client's raw model. DP protects the *released* global model (and everyone who sees
it), not the individual upload; secure aggregation (secagg.py) is what hides the upload.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..core.errors import ConfigError

__all__ = ["check_dp", "clip_update", "add_noise", "dp_average", "epsilon", "epsilon_per_round",
           "fixed_size_epsilon_per_round", "poisson_sample", "update_norm", "clients_needed"]


def _floats(d: dict) -> list[str]:
    return [k for k, v in d.items() if torch.is_tensor(v) and v.is_floating_point()]


def update_norm(delta: dict[str, torch.Tensor]) -> float:
    """L2 norm of all float tensors of `delta` taken together as one vector (in float64)."""
    sq = sum((delta[k].detach().double().square().sum() for k in _floats(delta)), torch.zeros((), dtype=torch.float64))
    return float(sq.sqrt())


def clip_update(delta: dict[str, torch.Tensor], clip: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale `delta` (its float tensors as one vector) to L2 norm <= clip; return (clipped, norm before).

    Non-float tensors (counters) are returned unchanged. The bound holds exactly after
    rounding to the tensors' dtype: if rounding the scaled values pushes the norm above
    `clip`, the factor is shrunk by one ulp at a time until it does not.
    """
    if not (isinstance(clip, numbers.Real) and math.isfinite(clip) and clip > 0):
        raise ConfigError(f"dp_clip={clip!r} is not allowed: must be a float > 0 to clip")
    norm = update_norm(delta)
    if not math.isfinite(norm):
        raise ConfigError(f"cannot clip an update whose norm is {norm} (it holds nan or inf)")
    out = {k: v.detach().clone() for k, v in delta.items()}
    if norm <= clip:
        return out, norm
    factor = clip / norm
    while True:
        for k in _floats(delta):
            out[k] = (delta[k].detach().double() * factor).to(delta[k].dtype)
        if update_norm(out) <= clip:
            return out, norm
        factor = math.nextafter(factor, 0.0) * (1 - 2.0 ** -24)


def add_noise(total: dict[str, torch.Tensor], noise_multiplier: float, clip: float,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Return total + N(0, (noise_multiplier * clip)^2) on every coordinate of its float tensors.

    The noise is drawn on the CPU from `generator` (in the dict's order) and moved to each
    tensor's device, so a run is reproducible on any device.
    """
    std = float(noise_multiplier) * float(clip)
    out = {}
    for k, v in total.items():
        if not (torch.is_tensor(v) and v.is_floating_point()) or std == 0:
            out[k] = v.detach().clone()
            continue
        noise = torch.randn(v.shape, generator=generator, dtype=torch.float32) * std
        out[k] = (v.detach().float() + noise.to(v.device)).to(v.dtype)
    return out


def dp_average(clipped_updates: list[dict[str, torch.Tensor]], noise_multiplier: float, clip: float,
               expected_clients: float, generator: torch.Generator, weights=None) -> dict[str, torch.Tensor]:
    """DP-FedAvg's estimate: (sum_k w_k Delta_k + N(0, (z S)^2)) / expected_clients.

    `clipped_updates` must already be clipped to `clip` (clip_update). weights=None means
    w_k = 1 and expected_clients = q K; with McMahan's bounded weights w_k in [0, 1] pass
    expected_clients = q W (q times the sum of all clients' weights). The denominator is
    fixed, so the result is *not* renormalised by the weights actually sampled.
    """
    if not clipped_updates:
        raise ValueError("dp_average needs at least one clipped update")
    if not (expected_clients > 0):
        raise ConfigError(f"expected_clients={expected_clients!r} is not allowed: must be > 0")
    if weights is None:
        weights = [1.0] * len(clipped_updates)
    if len(weights) != len(clipped_updates):
        raise ValueError(f"dp_average needs one weight per update: got {len(clipped_updates)} updates, "
                         f"{len(weights)} weights")
    for w in weights:
        if not 0 <= w <= 1:
            raise ConfigError(f"weight={w!r} is not allowed: DP-FedAvg weights must be in [0, 1] "
                              "(McMahan 2018's min(n_k / n_hat, 1)), else the sensitivity exceeds dp_clip")
    first = clipped_updates[0]
    total = {}
    for k, v in first.items():
        if not (torch.is_tensor(v) and v.is_floating_point()):
            total[k] = v.detach().clone()
            continue
        acc = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
        for u, w in zip(clipped_updates, weights):
            acc.add_(u[k].detach().double(), alpha=float(w))
        total[k] = acc.float()
    noised = add_noise(total, noise_multiplier, clip, generator)
    return {k: (v / expected_clients).to(first[k].dtype) if k in _floats(first) else v
            for k, v in noised.items()}


def check_dp(dp_clip, dp_noise, dp_delta) -> None:
    """Raise ConfigError (one line naming the field, value and range) unless the DP settings are valid.

    dp_clip >= 0 (0: DP off), dp_noise >= 0 and only with dp_clip > 0, 0 < dp_delta < 1.
    dp_clip > 0 with dp_noise = 0 is allowed: clipping only, epsilon is infinite.
    """
    def number(value):
        return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)

    if not number(dp_clip) or dp_clip < 0:
        raise ConfigError(f"dp_clip={dp_clip!r} is not allowed: must be a float >= 0 (L2 norm; 0 turns DP off)")
    if not number(dp_noise) or dp_noise < 0:
        raise ConfigError(f"dp_noise={dp_noise!r} is not allowed: must be a float >= 0 "
                          "(noise std = dp_noise * dp_clip; 0 = no noise)")
    if dp_noise > 0 and dp_clip == 0:
        raise ConfigError(f"dp_noise={dp_noise!r} is not allowed with dp_clip=0: must be 0 unless dp_clip > 0 "
                          "(noise std = dp_noise * dp_clip)")
    if not number(dp_delta) or not 0 < dp_delta < 1:
        raise ConfigError(f"dp_delta={dp_delta!r} is not allowed: must be a float in (0, 1), e.g. 1e-5")


def _rdp():
    # Imported here: opacus pulls in much of torch's optimizer stack (seconds), and only DP runs need it.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp
    return RDPAccountant, rdp


def _check_accounting(q, noise_multiplier, delta):
    if not (isinstance(q, numbers.Real) and 0 < q <= 1):
        raise ConfigError(f"q={q!r} is not allowed: sampling rate must be in (0, 1]")
    if not (isinstance(noise_multiplier, numbers.Real) and noise_multiplier >= 0):
        raise ConfigError(f"dp_noise={noise_multiplier!r} is not allowed: must be a float >= 0")
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ConfigError(f"dp_delta={delta!r} is not allowed: must be a float in (0, 1), e.g. 1e-5")


def epsilon(q: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """epsilon at `delta` after `steps` rounds at sampling rate q, from Opacus's RDPAccountant.

    0 steps spend nothing (0.0); noise_multiplier = 0 gives inf (no privacy).
    """
    _check_accounting(q, noise_multiplier, delta)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    RDPAccountant, _ = _rdp()
    acc = RDPAccountant()
    for _ in range(steps):  # one step per round; the accountant merges equal steps into one history entry
        acc.step(noise_multiplier=float(noise_multiplier), sample_rate=float(q))
    return float(acc.get_epsilon(delta=float(delta)))


def epsilon_per_round(q: float, noise_multiplier: float, rounds: int, delta: float) -> list[float]:
    """[epsilon after round 1, ..., after round `rounds`], each equal to epsilon(q, z, t, delta).

    The RDP of t identical steps is t times that of one (Opacus's compute_rdp multiplies
    by steps), so the per-order RDP of one round is computed once and each round costs
    only the RDP -> (epsilon, delta) conversion, with the accountant's own orders.
    """
    _check_accounting(q, noise_multiplier, delta)
    if noise_multiplier == 0:
        return [math.inf] * rounds
    RDPAccountant, rdp = _rdp()
    orders = RDPAccountant.DEFAULT_ALPHAS
    one = rdp.compute_rdp(q=float(q), noise_multiplier=float(noise_multiplier), steps=1, orders=orders)
    return [float(rdp.get_privacy_spent(orders=orders, rdp=one * t, delta=float(delta))[0])
            for t in range(1, rounds + 1)]


def fixed_size_epsilon_per_round(num_clients: int, clients_per_round: int, noise_multiplier: float, rounds: int,
                                 delta: float) -> list[float]:
    """epsilon after each round when exactly `clients_per_round` of `num_clients` are sampled without replacement.

    Replace-one neighbours: the noised sum moves by up to 2S, so the Gaussian's multiplier
    on that sensitivity is z / 2 (module docstring). dp-accounting's RDP accountant gives
    the per-order RDP of one round (Wang, Balle and Kasiviswanathan 2019, Theorem 27); t
    rounds compose to t times it, converted at `delta` with the accountant's own orders.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) or num_clients < 1:
        raise ConfigError(f"num_clients={num_clients!r} is not allowed: must be an int >= 1")
    if (isinstance(clients_per_round, bool) or not isinstance(clients_per_round, numbers.Integral)
            or not 1 <= clients_per_round <= num_clients):
        raise ConfigError(f"clients_per_round={clients_per_round!r} is not allowed: must be an int in "
                          f"[1, {num_clients}]")
    _check_accounting(clients_per_round / num_clients, noise_multiplier, delta)
    if noise_multiplier == 0:
        return [math.inf] * rounds
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        int(num_clients), int(clients_per_round), dp_accounting.GaussianDpEvent(float(noise_multiplier) / 2)))
    one = acc._rdp  # the RDP of one round at each of acc._orders (tests check t rounds against the accountant)
    return [float(rdp.compute_epsilon(acc._orders, one * t, float(delta))[0]) for t in range(1, rounds + 1)]


def poisson_sample(num_clients: int, q: float, generator) -> list[int]:
    """Clients that join a round when each joins independently with probability q (increasing order).

    One uniform draw per client from `generator` (a numpy Generator), in client order, so
    client k's membership depends only on its own draw.
    """
    return [int(k) for k in (generator.random(num_clients) < q).nonzero()[0]]


def clients_needed(noise_multiplier: float, num_params: int) -> int:
    """Clients per round m at which the noise on the mean is no larger than the largest mean update.

    The noise added to the average has norm about z S sqrt(d) / m (d coordinates), while
    the mean of updates clipped to S has norm at most S: m >= z sqrt(d) makes the noise no
    larger than that. McMahan et al. 2018 reach useful models with thousands of clients
    per round for this reason.
    """
    return max(1, math.ceil(float(noise_multiplier) * math.sqrt(num_params)))
