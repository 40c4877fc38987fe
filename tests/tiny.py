"""The tiny federation the engine tests share: 4 clients on synthetic MNIST-shaped data, the 2NN, one epoch.

Plain functions, so a module can build a config or a dataset where a fixture cannot reach
(a module-level helper, a module-scoped fixture of another size). Tests normally take the
`tiny` and `tiny_data` fixtures of conftest.py, which are these functions.
"""
from fl_lib.core.config import Config
from fl_lib.core.data import synthetic

BASE = dict(dataset="synthetic-mnist", model="2nn", num_clients=4, partition="dirichlet", local_epochs=1,
            batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0, num_rounds=4, augment=False,
            device="cpu", checkpoint_every=0)


def tiny_data(num_train: int = 160, num_test: int = 40):
    """Synthetic 1x28x28 images (the synthetic-mnist set at a small size), seed 0."""
    return synthetic(num_train=num_train, num_test=num_test, channels=1, size=28, seed=0, name="synthetic-mnist")


def tiny_config(**fields) -> Config:
    """BASE with `fields` on top (checked by Config)."""
    return Config(**{**BASE, **fields})
