# The two commands of the README. Both create ./.venv on first use (python3 >= 3.10).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --disable-pip-version-check -q
TORCH   ?= torch==2.14.1 torchvision==0.29.1
HOST    ?= 127.0.0.1
PORT    ?= 8000

.PHONY: serve test install-serve install-dev

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.serve: $(PY) pyproject.toml
	$(PIP) -e ".[serve]"
	touch $@

$(VENV)/.dev: $(PY) pyproject.toml
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.serve

install-serve: $(VENV)/.serve
install-dev: $(VENV)/.dev

## serve: start osr-serve on the bundled model (no torch needed)
serve: $(VENV)/.serve
	$(VENV)/bin/osr-serve --host $(HOST) --port $(PORT)

## test: the whole test suite, with a real tritonserver for the Triton tests
test: $(VENV)/.dev
	OSR_TRITON_VENV="$$(bash .ci/setup_triton.sh)" OSR_REQUIRE_TRITON=1 $(PY) -m pytest -q
