# edgetune: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# torch is pinned and installed first: a CPU wheel of 2.13.0 lies on these machines, while an
# unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/edgetune compress edgetune.zoo:digits_cnn --calib digits --eval digits:test -o out/demo
	$(BIN)/edgetune bench out/demo/model.onnx --runs 200
	$(BIN)/edgetune bench out/demo/model.fp32.onnx --runs 200

lint: $(STAMP)
	$(BIN)/ruff check edgetune tests bench
	$(BIN)/ruff format --check edgetune tests bench
	$(BIN)/mypy edgetune

bench: $(STAMP)
	$(BIN)/python bench/ptq.py

clean:
	rm -rf out bench/results .pytest_cache .mypy_cache .ruff_cache
