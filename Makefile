# The README's two commands: `make demo` (train + evaluate on generated data) and `make test`.
# Both create the environment outside the checkout when it is missing, reuse it otherwise,
# and stop at once when Detectron2 is not installed in it.
SHELL := /bin/bash
VENV := $(if $(TOKENPRUNE_VENV),$(TOKENPRUNE_VENV),$(HOME)/.cache/tokenprune/venv)
PYTHON := $(VENV)/bin/python
D2_GUIDE := https://detectron2.readthedocs.io/en/latest/tutorials/install.html
D2_TESTED := Detectron2 v0.6 (main branch, commit 02b5c4e2)
DEMO_DIR ?= output/synthetic_dense

.PHONY: demo test env

env:
	@test -x "$(PYTHON)" || python3 -m venv "$(VENV)"
	@"$(PYTHON)" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)" \
	  || { echo "error: Detectron2 is not installed in $(VENV). Install it by hand into that environment following the official guide $(D2_GUIDE) (tested with $(D2_TESTED)), then run this command again." >&2; exit 1; }
	@"$(PYTHON)" -m pip install -q --disable-pip-version-check \
	  "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0" -e ".[test,text]"

demo: env
	"$(PYTHON)" train_net.py --config-file configs/Synthetic/mask_rcnn_vitdet_t_dense.py \
	  train.output_dir=$(DEMO_DIR)

test: env
	"$(PYTHON)" -m pytest -q tests
