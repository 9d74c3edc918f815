# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup train test test-fast analyze study benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[test]"
	# torchattacks declares torchvision + requests~=2.25.1 but imports neither: install it alone.
	$(PIP) install -q --no-deps "torchattacks==3.5.1"
	# References for the tests: IBM ART's DeepFool (its pure-Python deps six/sklearn/scipy/tqdm come with
	# the test extra) and pytorch-ood's detector formulas (its package __init__ imports torchvision;
	# the tests load its detector modules alone). Both --no-deps, so no torchvision is pulled in.
	$(PIP) install -q --no-deps "adversarial-robustness-toolbox==1.20.1" "pytorch-ood==0.4.0"
	$(PY) -c "import torch, pytorch_lightning, torchmetrics, wandb, torchattacks, cvxpylayers.torch, art.attacks.evasion"
	touch $(STAMP)

train: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py $(ARGS)

analyze: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) analyze.py $(ARGS)

# One command per study: make study NAME=selu_mlp_mnist5k [ARGS="ckpt_path=<.ckpt> only=[featmap]"]
study: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) study.py name=$(NAME) $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(ARGS)

benchmark: $(STAMP)
	$(PY) benchmarks/geometry.py $(ARGS)

clean:
	rm -rf $(VENV) outputs wandb results .pytest_cache
