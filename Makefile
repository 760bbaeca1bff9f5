# Two commands do all the set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TINY_MODEL := runs/tiny-model
DEMO_DATA := examples/data/medical_o1_demo.json
# CPU build of torch: on this project's machines a local wheel; GPU images pin their own (images/).
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(TINY_MODEL)/config.json: | install
	$(BIN)/medo1 model init-tiny $(TINY_MODEL)

# Main job, small default: validate the demo data, tiny CPU SFT with export, load the export and
# generate, then a tiny PPO run from that export.
demo: install $(TINY_MODEL)/config.json
	$(BIN)/medo1 data validate $(DEMO_DATA) --format medical_o1 --tokenizer $(TINY_MODEL) --max-length 1024
	$(BIN)/medo1 sft --config recipes/sft-tiny-cpu.yaml --resume auto
	$(BIN)/medo1 model check runs/sft-tiny/export
	$(BIN)/medo1 rl --config recipes/rl-ppo-tiny-cpu.yaml --resume auto

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs
