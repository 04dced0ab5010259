#!/usr/bin/env bash
# The issue's fresh-wheel check: build the wheel, install it into a fresh venv (with the dev
# constraints, so torch stays the local CPU build), and from a temporary directory run the CLI's
# front door (train --data, sample --model, diagnose) and the estimator from Python.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1} CI=1 MPLBACKEND=Agg
start=$SECONDS

python3 -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install -q --upgrade pip build
"$work/build-venv/bin/python" -m build --wheel --outdir "$work/dist" "$repo" >/dev/null
wheel=$(ls "$work"/dist/flowmc_ebm-*.whl)
echo "built $(basename "$wheel") in $((SECONDS - start)) s"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q -c "$repo/constraints-dev.txt" "$wheel"
echo "installed into a fresh venv at $((SECONDS - start)) s"

cd "$work" && mkdir run-here && cd run-here   # nothing of the source tree on the path
PATH="$work/venv/bin:$PATH"
flowmc-ebm --version
python - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
x = np.concatenate([rng.normal([12.0, -4.0], 0.5, (600, 2)), rng.normal([14.0, -3.0], 0.5, (300, 2))])
np.savetxt("points.csv", x, delimiter=",", header="height,weight", comments="")
PY
flowmc-ebm train --data points.csv --iterations 20 --set trainer.pool_size=128 --out run
flowmc-ebm sample --model run --chains 32 --steps 60 --warmup 30 --out s
flowmc-ebm diagnose s/trace.npz --model run --importance --n-modes 2 --out d
test -s d/summary.json || { echo "diagnose wrote no summary.json" >&2; exit 1; }
python - <<'PY'
import numpy as np
import flowmc_ebm
from flowmc_ebm import FlowMCEBM
assert "site-packages" in flowmc_ebm.__file__, flowmc_ebm.__file__   # the wheel, not the tree
X = np.loadtxt("points.csv", delimiter=",", skiprows=1)
ebm = FlowMCEBM(n_iterations=15, pool_size=64, mcmc_steps=5).fit((X - X.mean(0)) / X.std(0))
s = ebm.score_samples((X[:5] - X.mean(0)) / X.std(0))
assert s.shape == (5,) and np.isfinite(s).all(), s
print("estimator from the wheel: log Z", round(float(ebm.log_normalizer_), 3), "+-",
      round(float(ebm.log_normalizer_se_), 3), "; version", flowmc_ebm.__version__)
PY
echo "wheel check passed in $((SECONDS - start)) s"
