"""The tiny federation the engine tests share: 4 clients on synthetic MNIST-shaped data, the 2NN, one epoch."""
from fl_lib.config import Config
from fl_lib.data import synthetic

BASE = dict(dataset="synthetic-mnist", model="2nn", num_clients=4, partition="dirichlet", local_epochs=1,
            batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0, num_rounds=4, augment=False,
            device="cpu", checkpoint_every=0)


def tiny_data(num_train: int = 160):
    """Synthetic 1x28x28 images, 40 test images, seed 0."""
    return synthetic(num_train=num_train, num_test=40, channels=1, size=28, seed=0, name="synthetic-mnist")


def tiny_config(**fields) -> Config:
    """BASE with `fields` on top (checked by Config)."""
    return Config(**{**BASE, **fields})
