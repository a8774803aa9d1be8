# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv when it is missing or
# stale (pyproject.toml changed) and installs the pinned dependencies itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on disk here; a GPU machine overrides this (make TORCH=torch ...) or keeps its own.
TORCH ?= torch==2.13.0
export MUJOCO_GL ?= egl

.PHONY: demo test docs test-lerobot bench gpu-bundle clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m vmp.demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link, anchor or API reference fails it.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

# LeRobot 0.4 needs torch<2.11: a separate environment, never the core one. Only the test tools of the dev extra:
# its transformers (the hf backbone's test) pins a huggingface-hub LeRobot 0.4 cannot take.
test-lerobot:
	test -x .venv-lerobot/bin/python || $(PYTHON) -m venv .venv-lerobot
	.venv-lerobot/bin/python -m pip install -q -e ".[lerobot]" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	.venv-lerobot/bin/python -m pytest -q tests -m lerobot

# The CPU benchmarks (each writes its results/*.json), then docs/results.md's tables and plots regenerated from results/.
bench: $(BIN)/.installed
	$(BIN)/vmp-bench suite=quick

# A GPU machine without this project's packages and without network: wheels and EGL loaders that bench/gpu_session.sh
# installs there (.whl/, .gl/; about 37 MiB).
gpu-bundle: $(BIN)/.installed
	bash bench/gpu_bundle.sh

clean:
	rm -rf $(VENV) .venv-lerobot stores outputs runs site
