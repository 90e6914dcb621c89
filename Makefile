# The two commands a new user needs: `make demo` and `make test`.
# Both create (or reuse) .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/brain-mri
MODEL_DIR ?= models
EPOCHS ?= 40
SEED ?= 42
STAMP := $(VENV)/.installed

.PHONY: venv browser test demo train bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's chromium renders the HTML report in the browser test (needs root or sudo once).
# If it cannot be installed the browser test is skipped with a reason, and this says so loudly.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; the report browser test will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m beam_pipeline.demo

# Reproduces the committed default model (seeded; CPU takes tens of minutes).
train: $(STAMP)
	$(PY) -m trainer.task --data-dir $(DATA) --model-dir $(MODEL_DIR) --epochs $(EPOCHS) --seed $(SEED) \
		--early-stopping-patience 15 --target-sensitivity 0.98 $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
