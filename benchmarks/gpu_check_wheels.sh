#!/usr/bin/env bash
# Build .wheelhouse/: the wheels benchmarks/gpu_check.sh installs on the lent GPU machine, which
# has no network and lacks these (its image ships torch, transformers, accelerate, peft, numpy,
# scikit-learn, pandas, pyarrow, ...; see the device tool's KINDS.md). Python 3.12, x86-64,
# no dependencies resolved: the list below is every missing one. trl and peft at the lowest
# declared versions (.ci/lowest.txt), which `tox -e lowest` tests with the machine's
# transformers 5.17; the rest at the versions of the Python running this script.
# Run here, in the repository root, with network: benchmarks/gpu_check_wheels.sh  (~6 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
lowest() { grep "^$1==" .ci/lowest.txt | cut -d= -f3; }
installed() { "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))"; }
rm -rf .wheelhouse && mkdir -p .wheelhouse
wanted=("trl==$(lowest trl)" "peft==$(lowest peft)")
# Not sqlalchemy (4.6 MiB; with alembic, mako and greenlet, the tuner's SQLite storage): beside
# the tracked tree (~54 MiB) it would pass the 64 MiB a call carries. The check runs untuned
# (budget tune=false), which imports none of them.
for name in datasets dill multiprocess optuna colorlog pydantic pydantic-core annotated-types typing-inspection gguf; do
    wanted+=("$name==$(installed "$name")")
done
for spec in "${wanted[@]}"; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .wheelhouse "$spec"
done
du -sh .wheelhouse
