"""fl_lib: a small, fast simulator of federated learning with quantized uploads."""

__version__ = "0.1.0"
