# Set-up and the two front-door commands. Everything a fresh clone needs is installed here.
#   make demo   -> create .venv, install, run the main job on the embedded default
#   make test   -> create .venv, install, run the default (fast) test suite
# GPU hosts: install the CUDA build of torch instead of the local CPU wheel, e.g.
#   make install TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint clean data-deps

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, so the package's torch range is already satisfied (no CUDA download on CPU hosts)
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/videopoet quickstart --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The offline training corpus (videopoet/data/corpus.py): photos, speech, MIDI music, sound effects.
# Only retraining the tokenizers needs these; tests and the demo do not.
data-deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		gnome-backgrounds mate-backgrounds espeak-ng fluidsynth fluid-soundfont-gm sound-theme-freedesktop

lint: install
	$(VENV)/bin/ruff check videopoet tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
