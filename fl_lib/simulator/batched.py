"""Batched clients: a round's sampled clients trained as one vectorized computation.

The clients' parameters are stacked along a new leading dim and one step of every
client runs as one call: `torch.func.vmap` over `functional_call` of the shared
model, then SGD with momentum and weight decay written on the stacked tensors:

    d = g + weight_decay * w,   u = momentum * u + d,   w = w - lr * u      (torch.optim.SGD)

with g = grad F_k + mu (w - w_global) under FedProx (the trainer's `prox_mu` > 0), as the Trainer does,
and + (c - c_k) under SCAFFOLD (the trainer's `control`).

Each client keeps its own batch order and augmentation draws: both trainers take
them from `client.client_batches` with the client's `Stream.BATCHES` generator.
Clients of unequal size are handled by masking: clients are sorted by their number of steps, so at step slot s the clients still
holding data are a prefix of the stack, and only that prefix is stepped (a client
whose data is exhausted takes no step); a short last batch is padded and its
padding weighted 0 in the loss. Without dropout the result equals sequential
training up to float rounding (vmap's grouped convolutions sum in another order);
with dropout (SqueezeNet) the masks are drawn differently, so the runs differ.

Text (the CharLSTM) is stacked by hand rather than through vmap, which has no batching rule for
PyTorch's fused LSTM and would loop over the clients: each time step of each layer is one `baddbmm`
over the clients (gates in PyTorch's order i, f, g, o), autograd runs through the unrolled sequence,
and padded sequences and characters carry the target -100 that the loss ignores. It equals the
fused LSTM's training up to float rounding. On a 2-core CPU it is about 5x slower than training
the clients one after another (benchmarks/text.py: 0.19x; the fused kernel already runs at two
thirds of the matmul peak), and it has not been timed on a GPU, so engine=auto never picks it;
engine=batched asks for it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from ..core.client import autocast, client_batches, num_steps
from ..core.errors import ConfigError
from ..core.models import CharLSTM
from ..core.fedprox import add_proximal_
from ..core.scaffold import stacked_corrections
from ..core.rng import SERVER, Stream, stream_seed, torch_generator
from ..core.shakespeare import IGNORE


def train_clients(trainer, chosen: list[int], t: int, global_state: dict) -> dict[int, tuple[dict, torch.Tensor]]:
    """Train clients `chosen` of round t from `global_state` at once, on `trainer`'s model and data.

    Returns {k: (state dict after E_t local epochs, mean training loss)}, the same
    pair `Trainer.weights` returns.
    """
    cfg, model = trainer.cfg, trainer.model
    text = trainer.data.is_text
    if text and not isinstance(model, CharLSTM):
        raise ConfigError(f"engine=batched stacks text clients of model=char_lstm only, not {cfg.model}")
    if any(True for _ in model.buffers()):
        raise ConfigError(f"engine=batched does not support model={cfg.model}: it has buffers; use engine=sequential")
    epochs, batch = trainer.epochs(t), trainer.batch_size(t)  # E_t and B_t: the config's, or the schedules'
    steps = {k: num_steps(len(trainer.clients[k]), batch, epochs) for k in chosen}  # samples (text: sequences)
    order = sorted(chosen, key=lambda k: -steps[k])  # active clients of any slot form a prefix
    m = len(order)
    names = [name for name, _ in model.named_parameters()]
    params = {n: global_state[n].detach().unsqueeze(0).repeat((m,) + (1,) * global_state[n].dim())
              for n in names}
    momenta = {n: torch.zeros_like(p) for n, p in params.items()} if cfg.momentum else {}
    control = (stacked_corrections(trainer.control, order, names)  # SCAFFOLD's c - c_k, stacked; None: all zero
               if trainer.control is not None else None)
    batches = [client_batches(trainer.data, trainer.clients[k], cfg, torch_generator(cfg.seed, t, k, Stream.BATCHES),
                              trainer.channels_last, epochs, batch) for k in order]
    total = torch.zeros(m, device=trainer.device)
    model.train()
    torch.manual_seed(stream_seed(cfg.seed, t, SERVER, Stream.DROPOUT))  # dropout: one stream for the round's clients

    def loss_fn(p, x, y, mask, count):
        with autocast(cfg.precision, trainer.device):
            ce = F.cross_entropy(functional_call(model, p, (x,)), y, reduction="none")
        return (ce * mask).sum() / count

    def text_step(p, x, y, mask, count):  # the same (grads, losses) as the vmapped step, for stacked LSTMs
        leaves = {n: v.detach().requires_grad_() for n, v in p.items()}
        with autocast(cfg.precision, trainer.device):
            logits = stacked_char_lstm(leaves, x)
        ce = F.cross_entropy(logits.flatten(0, 2), y.flatten(), reduction="none").view(len(y), -1)
        losses = ce.sum(1) / count  # each client's mean over its own characters, as the fused trainer's loss
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))  # client k's loss sees only its weights
        return dict(zip(leaves, grads)), losses.detach()

    step = text_step if text else vmap(grad_and_value(loss_fn), randomness="different")
    for s in range(steps[order[0]]):
        a = sum(1 for k in order if steps[k] > s)  # clients still holding data: order[:a]
        x, y, mask, count = (_stack_text if text else _stack)([next(batches[i]) for i in range(a)])
        grads, losses = step({n: p[:a] for n, p in params.items()}, x, y, mask, count)
        with torch.no_grad():
            total[:a] += losses.detach() * count
            if trainer.prox_mu:  # FedProx (core/fedprox.py): + mu (w - w_global), the global model broadcast
                add_proximal_([grads[n] for n in names], [params[n][:a] for n in names],
                              [global_state[n] for n in names], trainer.prox_mu)
            if control:  # SCAFFOLD (core/scaffold.py): + (c - c_k), each client its own c_k
                for n, corr in zip(names, control):
                    grads[n].add_(corr[:a])
            for n in names:
                _sgd(params[n][:a], grads[n], momenta.get(n), a, cfg)
    state = model.state_dict()
    out = {}
    for i, k in enumerate(order):
        sd = {n: params[n][i].to(state[n].dtype) for n in state}
        out[k] = (sd, total[i] / (trainer.sizes[k] * epochs))
    return out


def _sgd(p, grad, buf, a, cfg):
    """One torch.optim.SGD step (no dampening, not Nesterov) on stacked clients, in place."""
    d = grad if not cfg.weight_decay else torch.add(grad, p, alpha=cfg.weight_decay)
    if buf is not None:
        b = buf[:a]
        b.mul_(cfg.momentum).add_(d)  # zero at the start: the first step sets u = d exactly
        d = b
    p.add_(d, alpha=-cfg.lr)


def _stack(pairs):
    """One slot's batches as (a, B_max, ...) tensors; short batches padded, their padding masked out."""
    size = max(len(y) for _, y in pairs)
    x0, y0 = pairs[0]
    x = x0.new_zeros((len(pairs), size) + tuple(x0.shape[1:]))
    y = y0.new_zeros((len(pairs), size) + tuple(y0.shape[1:]))
    mask = torch.zeros(len(pairs), size, device=x0.device)
    for i, (xi, yi) in enumerate(pairs):
        x[i, :len(yi)] = xi
        y[i, :len(yi)] = yi
        mask[i, :len(yi)] = 1
    count = mask.sum(1)
    return x, y, mask, count


def _stack_text(pairs):
    """`_stack` for text: a padded sequence's characters get the target -100 (ignored by the loss), and
    `count` is each client's number of real target characters, the denominator of its mean loss."""
    x, y, mask, _ = _stack(pairs)
    y[mask == 0] = IGNORE
    return x, y, mask, (y != IGNORE).flatten(1).sum(1).to(mask.dtype)


def stacked_char_lstm(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits (a, B, L, V) of `a` stacked CharLSTMs (`p`: their parameters, each with a leading client dim)
    on character ids x (a, B, L): CharLSTM's forward, one batched matrix product per client step."""
    a, b, length = x.shape
    embed = p["embed.weight"]  # (a, V, E)
    h = embed[torch.arange(a, device=x.device)[:, None, None], x]  # (a, B, L, E): each client its own table
    layer = 0
    while f"lstm.weight_ih_l{layer}" in p:
        h = _stacked_lstm_layer(h, p[f"lstm.weight_ih_l{layer}"], p[f"lstm.weight_hh_l{layer}"],
                                p[f"lstm.bias_ih_l{layer}"] + p[f"lstm.bias_hh_l{layer}"])
        layer += 1
    out = torch.baddbmm(p["out.bias"].unsqueeze(1), h.reshape(a, b * length, -1), p["out.weight"].transpose(1, 2))
    return out.view(a, b, length, -1)


def _stacked_lstm_layer(x, w_ih, w_hh, bias):
    """One LSTM layer of `a` stacked clients, zero initial state: x (a, B, L, in) -> hidden states (a, B, L, H)."""
    a, b, length, _ = x.shape
    hidden = w_hh.shape[-1]
    gates_x = torch.baddbmm(bias.unsqueeze(1), x.reshape(a, b * length, -1), w_ih.transpose(1, 2))
    gates_x = gates_x.view(a, b, length, 4 * hidden)
    h = x.new_zeros(a, b, hidden)
    c = x.new_zeros(a, b, hidden)
    w_hh_t = w_hh.transpose(1, 2)
    out = []
    for t in range(length):
        i, f, g, o = torch.baddbmm(gates_x[:, :, t], h, w_hh_t).chunk(4, -1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 2)
