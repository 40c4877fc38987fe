"""fl_lib: a small, fast simulator of federated learning with quantized uploads."""
import os

# PyTorch's OpenMP threads spin while they wait for work. Two torch processes at
# once on a small machine (a report and a notebook kernel, or parallel tests) then
# steal each other's cores and both run about 10x slower. A passive wait avoids
# that at no measurable cost to a lone process. It only takes effect when fl_lib is
# imported before torch (or set in the shell); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.4.0"
