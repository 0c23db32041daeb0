# Two entry points for a fresh machine: `make demo` (the main job: certified vs empirical
# radii of 100 held-out examples of the zoo ODE-net; re-running it resumes) and `make test`.
# Both create the project-local virtual environment .venv and install what is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Read MNIST from ../shared/data when it exists (never copied into the repo).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/mnist),)
export ODE_ROBUSTNESS_DATA ?= $(SHARED_DATA)
endif

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench,cluster]'
	$(PY) -m pip install -q --no-deps auto_LiRPA==0.3 torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m verify certify --model ode --jobs 2 --resume

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m benchmarks.lipbound_speed
	$(PY) -m benchmarks.attacks_vs_peers --repeats 3
	$(PY) -m benchmarks.attacks_vs_peers --attacks pgd --repeats 8 --tag attacks_vs_peers_pgd
	$(PY) -m benchmarks.certify_speed --n 100 --n-plain 5 --jobs 2

clean:
	rm -rf $(VENV) .pytest_cache
