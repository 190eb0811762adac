# Two commands: `make demo` and `make test`. Both build the virtual environment on first use and
# rebuild it only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= true

.PHONY: demo test lint bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build installs from local disk; a bare `torch` pulls GBs
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/longreward demo

# Two pytest workers, a test file each: much of the suite waits on servers, leases and
# subprocesses, so two share the two cores well (~13 min alone, ~10 min with two).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

# Quick figures; bench/ingest.py at its full size (10,000 x 32k tokens) takes ~8 minutes.
bench: $(STAMP)
	$(BIN)/python bench/judge.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/ingest.py --prompts 500 --judgments 100000

clean:
	rm -rf $(VENV) lake .prefect
