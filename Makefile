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
	$(PY) -m benchmarks.mae_speed

lint: install
	$(VENV)/bin/ruff check .

# ---------------------------------------------------------------- Speed
MAE_REF ?= /tmp/mae_ref/models_mae.py
.PHONY: bench-speed bench-data
# ours vs facebookresearch/mae's models_mae.py (a copy at MAE_REF with util/pos_embed.py beside it; never in this repo)
bench-speed: install
	$(PY) -m benchmarks.mae_speed --reference $(MAE_REF) --precision bf16 32 --steps 10
	$(PY) -m benchmarks.mae_speed --compile --models demo vit_b16 --precision bf16

bench-data: install
	$(PY) -m benchmarks.data_loading --workers 1 2

# ---------------------------------------------------------------- Analysis (the SG-MAE paper's §3, §5.4)
.PHONY: analyze compare-fmnist
ANALYZE_OUT  ?= runs/analysis
ANALYZE_ARGS ?=

# The paper's figures (Fig. 2-7, III) and metrics.csv for the checkpoints of one run:
# make analyze CKPT="runs/sgmae_fmnist/sgmae-fmnist/<id>/checkpoints/epoch=*.ckpt" [ANALYZE_ARGS="--images DIR"]
analyze: downstream-ckpt install
	$(PY) -m lightning_mae.analysis.figures $(CKPT) --out $(ANALYZE_OUT) $(ANALYZE_ARGS)

# MAE vs SG-MAE (informed from epoch 2) vs SG-MAE (start_epoch: auto) on Fashion-MNIST, same budget:
# train the three, analyse their per-epoch checkpoints, overlay the curves, linear-probe the encoders.
FMNIST_RUNS := mae_fmnist sgmae_fmnist sgmae_fmnist_auto
latest_run = $$(ls -td runs/$(1)/sgmae-fmnist/*/ | head -1)
compare-fmnist: install data
	for r in $(FMNIST_RUNS); do $(CLI) fit --config experiments/$$r.yaml || exit 1; done
	for r in $(FMNIST_RUNS); do $(PY) -m lightning_mae.analysis.figures $(call latest_run,$$r)checkpoints/epoch=*.ckpt \
	  --out $(ANALYZE_OUT)/$$r || exit 1; done
	$(PY) -m lightning_mae.analysis.compare --layer 3 --out $(ANALYZE_OUT)/fmnist_compare.png --start SG-MAE=2 \
	  --run MAE=$(ANALYZE_OUT)/mae_fmnist --run SG-MAE=$(ANALYZE_OUT)/sgmae_fmnist \
	  --run SG-MAE-auto=$(ANALYZE_OUT)/sgmae_fmnist_auto
	$(PY) -m lightning_mae.downstream.runner --protocols linprobe --out_dir runs/downstream \
	  $(foreach r,$(FMNIST_RUNS),--ckpt $(call latest_run,$(r))checkpoints/last.ckpt)

# The same three methods over seeds, as evidence (docs/sgmae-evidence.md): pretrain each per seed (finished runs under
# runs/sgmae_evidence are reused), linear probe, k-NN, fine-tune and a transfer probe on digits, paired t-tests per
# metric, clustering curves; writes $(EVIDENCE_OUT)/table.md, results.csv and plots. Hours on 2 CPU cores.
# e.g. make sgmae-evidence EVIDENCE_ARGS="--epochs 12 --runs runs/sgmae_evidence_e12"
.PHONY: sgmae-evidence
EVIDENCE_SEEDS ?= 0 1 2
EVIDENCE_OUT   ?= docs/evidence
EVIDENCE_ARGS  ?=
sgmae-evidence: install data
	$(PY) -m benchmarks.sgmae_evidence --seeds $(EVIDENCE_SEEDS) --out $(EVIDENCE_OUT) $(EVIDENCE_ARGS)

# ---------------------------------------------------------------- Streaming ImageNet (litdata shards)
.PHONY: shards
IMAGENET_DIR ?= data/imagenet
SHARDS_DIR   ?= data/imagenet-shards
SHARDS_ARGS  ?=
# ImageFolder train/ (and val/) -> litdata shards of the JPEG bytes; upload $(SHARDS_DIR) to a bucket to stream it
shards: install
	$(PY) -m datamodules.pretraining.streaming convert $(IMAGENET_DIR)/train $(SHARDS_DIR)/train $(SHARDS_ARGS)
	@if [ -d $(IMAGENET_DIR)/val ]; then $(PY) -m datamodules.pretraining.streaming convert $(IMAGENET_DIR)/val $(SHARDS_DIR)/val $(SHARDS_ARGS); fi

# ---------------------------------------------------------------- Neural Experts (lightning_inr)
.PHONY: data-inr paper-tables bench-inr bench-inr-compile inr-image inr-audio inr-sdf manager
INR_DATA   ?= data
KODAK_DIR  ?= $(INR_DATA)/kodak

# The configs fit the samples bundled in the package (datamodules/signals/samples: kodim19, gt_bach, bunny).
# The full sets (Kodak 1-24, the three audio clips, bunny + armadillo) go to $(INR_DATA)/ from their public
# sources, sha256-checked; files already there are skipped (needs internet; see datamodules/signals/download.py).
data-inr: install
	$(PY) -m datamodules.signals.download --out $(INR_DATA)

# The paper's tables on a CPU budget (benchmarks/paper_tables.py): each writes docs/neural-experts-results/<table>.md,
# <table>.png (curves) and <table>.json (every fit, committed); fits already in runs/paper or the .json are reused,
# so a clone rebuilds a table without fitting. Kodak and audio read $(INR_DATA) (`make data-inr`).
# e.g. `make paper-kodak PAPER_ARGS="--steps 30000 --signals all"` for the paper's budget on all 24 images.
PAPER_TABLES ?= kodak variants audio sdf ablations
PAPER_ARGS   ?=
PAPER_OUT    ?= docs/neural-experts-results
paper-tables: $(addprefix paper-,$(PAPER_TABLES))
paper-%: install
	$(PY) -m benchmarks.paper_tables $* --kodak $(KODAK_DIR) --audio $(INR_DATA)/audio --out $(PAPER_OUT) $(PAPER_ARGS)

bench-inr: install
	$(PY) -m benchmarks.inr_speed

# eager vs torch.compile per step (SIREN, Neural Experts K = 4): what SignalFit(compile="auto") relies on
bench-inr-compile: install
	$(PY) -m benchmarks.inr_speed --compile 4 --steps 5

# The pretrained manager shipped for the image setting (128² grid, K = 4, random labels, image-independent):
# experiments/inr_image.yaml's managers/image_128_k4_random.pt. 3,000 full-batch Adam steps, seed 0: ~9 min on two
# CPU cores (MANAGER_ARGS="--device cuda" on a GPU). tests/test_inr_training.py checks that it reproduces the file.
MANAGER_OUT  ?= lightning_inr/managers/image_128_k4_random.pt
MANAGER_ARGS ?=
manager: install
	$(PY) -m lightning_inr.manager_pretraining --resolution 128 --experts 4 --out $(MANAGER_OUT) $(MANAGER_ARGS)

inr-image: install
	$(CLI) fit --config experiments/inr_image.yaml

inr-audio: install
	$(CLI) fit --config experiments/inr_audio.yaml

inr-sdf: install
	$(CLI) fit --config experiments/inr_sdf.yaml

# ---------------------------------------------------------------- Downstream evaluation
.PHONY: downstream coco ade20k downstream-ckpt
DOWNSTREAM_OUT  ?= runs/downstream
DOWNSTREAM_ARGS ?=

downstream-ckpt:
	@if [ -z "$(CKPT)" ]; then echo "CKPT is required, e.g. make $(MAKECMDGOALS) CKPT=runs/sgmae_fmnist/sgmae-fmnist/<run>/checkpoints/last.ckpt (several: CKPT=\"a.ckpt b.ckpt\")" >&2; exit 2; fi
	@for c in $(CKPT); do [ -f "$$c" ] || { echo "CKPT: no such file: $$c" >&2; exit 2; }; done

# Linear probe + fine-tune of each checkpoint on Fashion-MNIST (and on the datasets given in
# DOWNSTREAM_ARGS, e.g. "--imagenet /data/imagenet --cub /data/CUB_200_2011"); writes results.md/.csv.
downstream: downstream-ckpt install
	$(PY) -m lightning_mae.downstream.runner $(foreach c,$(CKPT),--ckpt $(c)) --out_dir $(DOWNSTREAM_OUT) $(DOWNSTREAM_ARGS)

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
