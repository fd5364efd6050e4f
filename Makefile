# Every target sets up what it needs first; `make test` on a fresh machine installs, then tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/lightning
export WANDB_MODE ?= offline

.PHONY: install data demo test test-fast bench lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

# Fashion-MNIST for the demo: Debian's package when apt is usable, else torchvision downloads it
# into data/ at the first run (needs internet).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else echo "Fashion-MNIST not installed: 'sudo apt-get install dataset-fashion-mnist', or run online (torchvision downloads it)"; fi

demo: install data
	$(CLI) fit --config experiments/sgmae_fmnist.yaml

test: install data
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

bench: install
	$(PY) -m lightning_mae.bench

lint: install
	$(VENV)/bin/ruff check .

# ---------------------------------------------------------------- Neural Experts (lightning_inr)
.PHONY: kodak bench-inr inr-image inr-audio inr-sdf
KODAK_DIR  ?= ../shared/data/kodak
KODAK_ARGS ?=

# Fit every Kodak image of $(KODAK_DIR) with every method and write runs/kodak/table.md
# (e.g. `make kodak KODAK_ARGS="--images kodim19.png --methods neural_experts siren --steps 2000"`).
kodak: install
	$(PY) -m lightning_inr.kodak --folder $(KODAK_DIR) --out runs/kodak $(KODAK_ARGS)

bench-inr: install
	$(PY) -m lightning_inr.bench

inr-image: install
	$(CLI) fit --config experiments/inr_image.yaml

inr-audio: install
	$(CLI) fit --config experiments/inr_audio.yaml

inr-sdf: install
	$(CLI) fit --config experiments/inr_sdf.yaml
