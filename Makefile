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

# ---------------------------------------------------------------- Downstream evaluation (issue 4)
.PHONY: downstream coco ade20k downstream-ckpt
DOWNSTREAM_OUT  ?= runs/downstream
DOWNSTREAM_ARGS ?=

downstream-ckpt:
	@if [ -z "$(CKPT)" ]; then echo "CKPT is required, e.g. make $(MAKECMDGOALS) CKPT=runs/sgmae_fmnist/sgmae-fmnist/<run>/checkpoints/last.ckpt (several: CKPT=\"a.ckpt b.ckpt\")" >&2; exit 2; fi
	@for c in $(CKPT); do [ -f "$$c" ] || { echo "CKPT: no such file: $$c" >&2; exit 2; }; done

# Linear probe + fine-tune of each checkpoint on Fashion-MNIST (and on the datasets given in
# DOWNSTREAM_ARGS, e.g. "--imagenet /data/imagenet --cub /data/CUB_200_2011"); writes results.md/.csv.
downstream: downstream-ckpt install
	$(PY) -m lightning_mae.downstream $(foreach c,$(CKPT),--ckpt $(c)) --out_dir $(DOWNSTREAM_OUT) $(DOWNSTREAM_ARGS)

# COCO detection + instance segmentation (Mask R-CNN, ViTDet pyramid): make coco CKPT=... COCO_DIR=/data/coco
COCO_DIR  ?= data/coco
COCO_ARGS ?=
coco: downstream-ckpt install
	$(CLI) fit --config experiments/coco_det.yaml --model.init_args.checkpoint $(CKPT) --data.init_args.data_dir $(COCO_DIR) $(COCO_ARGS)

# ADE20K semantic segmentation (UperNet): make ade20k CKPT=... ADE20K_DIR=/data/ADEChallengeData2016
ADE20K_DIR  ?= data/ADEChallengeData2016
ADE20K_ARGS ?=
ade20k: downstream-ckpt install
	$(CLI) fit --config experiments/ade20k_seg.yaml --model.init_args.checkpoint $(CKPT) --data.init_args.data_dir $(ADE20K_DIR) $(ADE20K_ARGS)
