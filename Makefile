# Two commands a newcomer needs: `make run` (the main job) and `make test`.
# Both create the virtualenv on first use from the pinned requirements.lock.
# The venv is built from Debian's /usr/bin/python3 with system site packages
# so that Debian's python3-libkdumpfile (used by the tests) is importable.
SYSPY := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench bench-big venv clean golden lab

$(STAMP): requirements.lock pyproject.toml
	$(SYSPY) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kdumpsim experiment experiments/dma_sweep.yaml --out results/dma_sweep

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not realkdump"

lint: $(STAMP)
	$(VENV)/bin/ruff check kdumpsim tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/run_all.py

# experiments/big_sweep.yaml (10,044 runs) end to end: minutes.
bench-big: $(STAMP)
	$(PY) bench/bench_big_sweep.py

# The three CI scenarios as real kdump cycles (QEMU TCG, ~90 s), each predicted and
# compared; results in out/lab/<scenario>/, then the predicted-vs-measured table.
lab: $(STAMP)
	rm -rf out/lab && mkdir -p out/lab
	KDUMPSIM_LAB=1 KDUMPSIM_LAB_RESULTS=out/lab $(PY) -m pytest -q -s tests/lab/test_lab_real.py
	$(PY) -m kdumpsim lab compare --summary out/lab/e1000-nodriver-200pps out/lab/e1000-driver-10pps \
		out/lab/virtio-net-virtio-disk | tee out/lab/compare.md

golden: $(STAMP)
	$(PY) -m kdumpsim.sweep.golden --regen

clean:
	rm -rf $(VENV) results .pytest_cache
