# Each target makes .venv first; the dev set-up pins torch to the local CPU build (constraints-dev.txt).
PY := .venv/bin/python
STAMP := .venv/.installed
export MPLBACKEND := Agg

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flowmc_ebm.cli demo

# The whole suite, slow statistical checks and the docstring examples included.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules tests samplers flowmc_ebm

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) bench/sampler_overhead.py --out bench/results

lint: $(STAMP)
	$(PY) -m ruff check samplers flowmc_ebm tests bench examples

clean:
	rm -rf .venv build *.egg-info
