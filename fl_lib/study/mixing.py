"""Why averaging works: McMahan et al. (2017), Figure 1.

Two 2NNs are trained on disjoint IID samples of the training set, then mixed as
theta * w + (1 - theta) * w' and the mixture's loss is measured on the whole training
set. From independent initializations the mixture is worse than either parent
around theta = 0.5; from one shared initialization it is better than both, which is
what lets FedAvg average models trained apart.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.data import Dataset, get_batch
from ..core.models import build_model

EVAL_BATCH = 5000  # training samples per forward pass when measuring the loss


def train_alone(model, data: Dataset, idx, steps: int, batch_size: int, lr: float, seed: int):
    """`steps` updates of plain SGD on minibatches drawn without replacement from `idx`, epoch by epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # start a new pass over the sample
            order = idx[torch.randperm(len(idx), generator=g)]
        batch, order = order[:batch_size], order[batch_size:]
        x, y = get_batch(data, batch, train=True, augment=False)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


@torch.inference_mode()
def training_loss(model, data: Dataset) -> float:
    """Mean cross-entropy of `model` over the whole training split."""
    model.eval()
    n = len(data.y_train)
    total = 0.0
    for start in range(0, n, EVAL_BATCH):
        idx = torch.arange(start, min(start + EVAL_BATCH, n))
        x, y = get_batch(data, idx, train=True, augment=False)
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
    return total / n


def mixing_curves(data: Dataset, num_thetas: int = 50, theta_min: float = -0.2, theta_max: float = 1.2,
                  num_samples: int = 600, batch_size: int = 50, steps: int = 240, lr: float = 0.1,
                  model: str = "2nn", seed: int = 0):
    """Training-set loss of theta * w + (1 - theta) * w' for independent and shared initializations.

    w and w' are trained on disjoint random samples of `num_samples` training images each
    (the paper: 600 images, SGD lr 0.1, minibatch 50, 240 updates = 20 passes). Returns a
    DataFrame with columns init ("independent" or "shared"), theta and loss.
    """
    import pandas as pd

    data = data.to("cpu")
    if 2 * num_samples > len(data.y_train):
        raise ValueError(f"need 2 x num_samples = {2 * num_samples} training images, "
                         f"the dataset has {len(data.y_train)}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(data.y_train)))
    samples = perm[:num_samples], perm[num_samples:2 * num_samples]
    thetas = np.linspace(theta_min, theta_max, num_thetas)

    def fresh(init_seed):
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(init_seed)
            return build_model(model, data.num_classes, data.in_channels, data.image_size)

    rows = []
    for init in ("independent", "shared"):
        seeds = (seed, seed) if init == "shared" else (seed, seed + 1)
        w, w2 = (train_alone(fresh(s), data, idx, steps, batch_size, lr, seed=seed + 10 + k).state_dict()
                 for k, (s, idx) in enumerate(zip(seeds, samples)))
        mixed = fresh(seed)
        for theta in thetas:
            mixed.load_state_dict({k: theta * w[k] + (1 - theta) * w2[k] for k in w})
            rows.append({"init": init, "theta": float(theta), "loss": training_loss(mixed, data)})
    return pd.DataFrame(rows)
