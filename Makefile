# The README's two commands: `make demo` (train + evaluate on generated data) and `make test`.
# Both set up what they need, once, in an environment outside the checkout:
#   venv -> torch/torchvision (only when missing) -> Detectron2 (only when missing: from
#   $DETECTRON2_SRC, a local checkout, else the pinned git commit; non-editable, no build
#   isolation) -> the project's dependencies read from setup.cfg (re-run only when they change).
# The package itself is never installed: each checkout puts its own projects/TokenPrune on
# PYTHONPATH, so two checkouts sharing one environment each run their own code.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := $(if $(TOKENPRUNE_VENV),$(TOKENPRUNE_VENV),$(HOME)/.cache/tokenprune/venv)
PYTHON := $(VENV)/bin/python
PIP := "$(PYTHON)" -m pip install -q --disable-pip-version-check
TORCH := torch==2.14.1 torchvision==0.29.1
D2_BUILD_REQS := 'setuptools>=61,<81' wheel ninja
D2_COMMIT := 02b5c4e295e990042a714712c21dc79b731e8833
D2_GIT := git+https://github.com/facebookresearch/detectron2.git@$(D2_COMMIT)
D2_SOURCE := $(if $(DETECTRON2_SRC),$(DETECTRON2_SRC),$(D2_GIT))
D2_MANUAL = $(PYTHON) -m pip install $(D2_BUILD_REQS) && $(PYTHON) -m pip install --no-build-isolation '$(1)'
REQS := $(VENV)/tokenprune-requirements.txt
DEMO_DIR ?= output/synthetic_dense
# pytest worker processes (pytest-xdist); a test file's tests stay in one worker, so its
# module fixtures (a trained model, the quick ablation) are built once
TEST_WORKERS ?= 2
export PYTHONPATH := $(CURDIR)/projects/TokenPrune$(if $(PYTHONPATH),:$(PYTHONPATH))
# OpenMP threads that wait for work sleep instead of spinning: with spinning threads, two
# processes of 2 threads on 2 cores ran 8x slower than one after the other (measured: 170 s
# against 21 s for two 20-iteration trainings); the thread count, so every float sum, is
# unchanged, and one process alone is no slower
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: demo test env

env:
	@test -x "$(PYTHON)" || { echo "[setup] creating $(VENV)"; python3 -m venv "$(VENV)"; }
	@if ! "$(PYTHON)" -c "import detectron2" 2>/dev/null; then \
	  if [ -n "$(DETECTRON2_SRC)" ] && [ ! -f "$(DETECTRON2_SRC)/setup.py" ]; then \
	    echo "error: DETECTRON2_SRC=$(DETECTRON2_SRC) is not a Detectron2 checkout (no setup.py). Point it at one (commit $(D2_COMMIT)), or install Detectron2 by hand, then run this command again: $(call D2_MANUAL,$(D2_GIT))" >&2; exit 1; fi; \
	  "$(PYTHON)" -c "import torch, torchvision" 2>/dev/null \
	    || { echo "[setup] installing $(TORCH)"; $(PIP) $(TORCH); }; \
	  echo "[setup] building Detectron2 from $(D2_SOURCE) (a few minutes)"; \
	  { $(PIP) $(D2_BUILD_REQS) && $(PIP) --no-build-isolation "$(D2_SOURCE)"; } \
	    || { echo "error: could not install Detectron2 into $(VENV). Install it by hand, then run this command again: $(call D2_MANUAL,$(D2_SOURCE))" >&2; exit 1; }; \
	fi
	@! "$(PYTHON)" -m pip show -q tokenprune 2>/dev/null \
	  || { echo "[setup] removing the copy of tokenprune installed in $(VENV) (each checkout runs its own)"; \
	       "$(PYTHON)" -m pip uninstall -q -y tokenprune; }
	@"$(PYTHON)" -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
	  extras = c['options.extras_require']; \
	  print(''.join(c['options']['install_requires'] + extras['test'] + extras['text']).strip())" \
	  > "$(REQS).new"
	@cmp -s "$(REQS).new" "$(REQS)" \
	  || { echo "[setup] installing the dependencies in setup.cfg"; $(PIP) -r "$(REQS).new" && mv "$(REQS).new" "$(REQS)"; }
	@rm -f "$(REQS).new"

demo: env
	"$(PYTHON)" train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_dense.py \
	  train.output_dir=$(DEMO_DIR)

test: env
	"$(PYTHON)" -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
