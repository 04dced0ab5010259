# Each target makes .venv first; the dev set-up pins torch to the local CPU build (constraints-dev.txt).
PY := .venv/bin/python
STAMP := .venv/.installed
export MPLBACKEND := Agg

.PHONY: demo test test-slow bench lint docs clean

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flowmc_ebm.cli demo

# The suite CI runs (under 10 minutes on 2 cores): every test but those marked `slow`, and the
# docstring examples. The slow statistical checks (long soak, long training) run in `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" --doctest-modules tests samplers flowmc_ebm

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:cacheprovider tests

# Peers (flowMC on JAX, torchebm) live in a venv of their own; torch stays pinned there too.
BENCH_STAMP := .venv-bench/.installed
$(BENCH_STAMP): pyproject.toml constraints-dev.txt
	test -x .venv-bench/bin/python || python3 -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -c constraints-dev.txt -e '.[bench]'
	touch $(BENCH_STAMP)

# The quick set: minutes on 2 CPU cores; JSON in bench/results/.
bench: $(STAMP) $(BENCH_STAMP)
	$(PY) bench/sampler_overhead.py --out bench/results
	.venv-bench/bin/python -m bench.sampling_peers --quick --out bench/results
	$(PY) bench/ebflow_step.py --dims 64 256 784 --rounds 3 --out bench/results
	$(PY) bench/training_cost.py --threads 1 --out bench/results

# The site (tutorials, guides, results, API reference from the docstrings) in build/site, offline;
# --strict: a warning (a docstring griffe cannot parse, a broken link) fails the build.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --quiet

lint: $(STAMP)
	$(PY) -m ruff check samplers flowmc_ebm tests bench examples

clean:
	rm -rf .venv .venv-bench build *.egg-info
