# Hatchery — every target installs what it needs first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
TOOLS_VENV  ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

.PHONY: setup tools run test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# guidellm and lm-eval (the `tools` extra) in their own venv, which sees the project's
# packages (torch among them) through a .pth file, so torch is never installed twice.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): pyproject.toml $(STAMP)
	test -x $(TOOLS_VENV)/bin/python || $(PY) -m venv $(TOOLS_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(TOOLS_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_project.pth"
	$(TOOLS_VENV)/bin/python -m pip install -q "$(TORCH)" $$($(PY) -c "import tomllib; \
	  print(' '.join(p for p in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tools']))")
	touch $(TOOLS_STAMP)

run: setup
	$(VENV)/bin/hatchery db upgrade
	$(VENV)/bin/hatchery serve

test: setup tools
	HATCHERY_TOOLS_BIN=$(abspath $(TOOLS_VENV))/bin $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmark_api.make_bench --threads 1
	$(PY) -m benchmark_api.make_serving_bench
	$(PY) -m benchmark_api.scaleout_bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core test_api generator_api benchmark_api unified_api clients hatchery_cli
	$(VENV)/bin/lint-imports  # the layers of pyproject's [tool.importlinter]

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .pytest_cache .mypy_cache .ruff_cache
