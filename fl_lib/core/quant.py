"""Channel-wise symmetric quantization of one tensor, equations (1)-(3) of the paper.

One channel c is one slice along dim 0 (the output channel) of a tensor with two or
more dims; a 1-D or 0-D tensor is a single channel. With q_max = 2^(bits-1) - 1 and
q_min = -q_max:

    s_c    = max_i |w_ci| / q_max                       (1)
    q_ci   = clip(round(w_ci / s_c), q_min, q_max)       (2)
    w_hat  = s_c * q_ci                                  (3)

bits = 32 means "no quantization" (plain float32). `quantize` only accepts 2..16,
because a QTensor always holds integer codes; `fake_quantize` maps 32 to float32.
"""
import math
import numbers
from dataclasses import dataclass

import torch

from .config import BITS, ROUNDINGS
from .errors import CodecError, ConfigError



def check_bits(bits, allow_float=True):
    """Return `bits` if it is an int in 2..16 (or 32 when allow_float), else raise ConfigError."""
    allowed = BITS if allow_float else BITS[:-1]
    # bool is an Integral and 16.0 == 16: both would slip through a plain `in`.
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in allowed:
        text = "2..16 or 32" if allow_float else "2..16"
        raise ConfigError(f"bits={bits!r} is not allowed; use an int in {text}")
    return int(bits)


def check_rounding(rounding):
    """Return `rounding` if it is 'nearest' or 'stochastic', else raise ConfigError."""
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding={rounding!r} is not allowed; use one of {ROUNDINGS}")
    return rounding


def q_max(bits):
    """Largest code of a signed symmetric `bits`-bit quantizer: 2^(bits-1) - 1."""
    return 2 ** (bits - 1) - 1


def code_dtype(bits):
    """Smallest torch integer dtype holding the codes of a `bits`-bit quantizer."""
    return torch.int8 if bits <= 8 else torch.int16


def num_channels(shape):
    """Number of channels C of a tensor: size of dim 0 if it has >= 2 dims, else 1."""
    return shape[0] if len(shape) >= 2 else 1


@dataclass
class QTensor:
    """Integer codes q (shape of w), float32 scales s (shape (C,)) and the original dtype."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    dtype: torch.dtype

    @property
    def shape(self):
        """Shape of the original tensor w."""
        return self.q.shape


def _channels(w):
    """View `w` as a (C, numel / C) matrix, one row per channel."""
    c = num_channels(w.shape)
    return w.reshape(c, w.numel() // c if c else 0)


def quantize(w, bits, rounding="nearest", generator=None, name="tensor"):
    """Quantize float tensor `w` channel-wise to `bits`-bit codes, equations (1)-(2)."""
    check_bits(bits, allow_float=False)
    check_rounding(rounding)
    if not w.is_floating_point():
        raise CodecError(f"{name}: cannot quantize a {w.dtype} tensor, only float tensors")
    x = _channels(w.detach().float())  # float16/bfloat16 upcast: work in float32
    amax = x.abs().amax(dim=1) if x.numel() else x.new_zeros(x.shape[0])
    if not bool(torch.isfinite(amax).all()):  # amax propagates nan and inf: one cheap check
        raise CodecError(f"{name}: tensor has non-finite values (nan or inf); cannot quantize")
    qm = q_max(bits)
    # (1), computed exactly in float64 on the C scales, then rounded *up* to float32 so
    # that s_c * q_max >= max|w| holds exactly: (2) then never clips, even when s_c is
    # subnormal and float32 rounding of (1) would otherwise lose half its value. Only
    # next to float32's largest value is it rounded down, so that w_hat stays finite.
    exact = amax.double() / qm
    scale = exact.float()
    scale = torch.where(scale.double() < exact, torch.nextafter(scale, scale.new_tensor(math.inf)), scale)
    too_big = scale.double() * qm > torch.finfo(torch.float32).max
    scale = torch.where(too_big, torch.nextafter(scale, scale.new_tensor(0.0)), scale)
    # An all-zero channel keeps scale 0 and codes 0: divide by 1 there instead of 0.
    ratio = x / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    if rounding == "nearest":
        codes = torch.round(ratio)  # half to even, so |w - w_hat| <= s_c / 2
    else:
        # Round up with probability equal to the fractional part, so E[q] = w / s_c.
        # Draw on CPU with the caller's generator so runs are reproducible on any device.
        u = torch.rand(ratio.shape, generator=generator).to(ratio.device)
        low = torch.floor(ratio)
        codes = low + (u < ratio - low).float()
    q = codes.clamp_(-qm, qm).to(code_dtype(bits)).reshape(w.shape)
    return QTensor(q=q, scale=scale, bits=bits, dtype=w.dtype)


def dequantize(qt):
    """Reconstruct w_hat = s_c * q_c as a float32 tensor, equation (3)."""
    return (_channels(qt.q).float() * qt.scale[:, None]).reshape(qt.q.shape)


def fake_quantize(w, bits, rounding="nearest", generator=None, name="tensor"):
    """Return w_hat = dequantize(quantize(w)) as float32; bits=32 returns w as float32."""
    if check_bits(bits) == 32:
        return w.detach().float()
    return dequantize(quantize(w, bits, rounding, generator, name))


def relative_error(w, w_hat):
    """Relative reconstruction error ||w_hat - w|| / ||w|| (0 when both are zero, inf when only w is).

    `w` and `w_hat` are tensors, or state dicts whose float tensors are pooled into
    one vector (what a whole upload loses). Sums of squares run in float32 on the
    tensors' device with one sync at the end (the engine calls this for every upload).
    """
    if isinstance(w, dict):
        names = [n for n, v in w.items() if v.is_floating_point()]
        pairs = [(w[n].detach().float(), w_hat[n].detach().to(w[n].device).float()) for n in names]
    else:
        pairs = [(w.detach().float(), w_hat.detach().float())]
    if not pairs:
        return 0.0
    diff2 = torch.stack([(b - a).pow(2).sum() for a, b in pairs]).sum().item()
    norm2 = torch.stack([a.pow(2).sum() for a, _ in pairs]).sum().item()
    if norm2 == 0:
        return 0.0 if diff2 == 0 else float("inf")
    return math.sqrt(diff2 / norm2)
