# The two commands of the README: `make demo` (a real training run) and `make test`.
# Each creates .venv when it is missing and installs what it needs: torch 2.13.0 first (the CPU
# wheel on our machines; a newer pin or a plain `torch` would pull a multi-GB CUDA build), then
# the project with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := dev,atari,crafter,metaworld,video,report,sweep

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/harmonyray train --config cartpole

# Two workers: the Ray tests in one, in order, the tests without Ray in the other (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) runs .pytest_cache
