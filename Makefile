# The README's two commands are `make demo` and `make test`; both set up what is missing first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vltools-installed

.PHONY: demo test test-oldest lab bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vltools needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make demo: execute every notebook headless, each on its default offline model (toy, trained on
## synthetic shapes, where a trained model teaches something; tiny, random weights, where the
## mechanics are the point), write HTML to build/notebooks/. VLTOOLS_MODEL=... runs all on one.
demo: $(STAMP)
	$(if $(VLTOOLS_MODEL),VLTOOLS_MODEL=$(VLTOOLS_MODEL) ,)$(BIN)/python -m vltools.demo

## make test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## make test-oldest: the loader tests (model_building, models, exactness, family, half precision,
## prefix cache) against the OLDEST transformers pyproject.toml allows, installed once beside the
## venv in build/ (--no-deps: the venv's newer tokenizers/safetensors/hub serve both versions)
OLDEST_TRANSFORMERS = $(shell $(BIN)/python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print(next(re.search(r'>=([0-9.]+)', d).group(1) for d in deps if d.startswith('transformers')))")
OLDEST_DIR = build/transformers-$(OLDEST_TRANSFORMERS)
LOADER_TESTS = tests/test_model_building.py tests/test_models.py tests/test_models_exactness.py \
	tests/test_family.py tests/test_half_precision.py tests/test_prefix_cache.py
test-oldest: $(STAMP)
	@test -d $(OLDEST_DIR) || $(BIN)/python -m pip install --quiet --no-deps --target $(OLDEST_DIR) 'transformers==$(OLDEST_TRANSFORMERS)'
	PYTHONPATH=$(OLDEST_DIR) $(BIN)/python -c "import transformers as t; v = t.__version__; print('test-oldest: transformers', v); assert v.startswith('$(OLDEST_TRANSFORMERS)'), v"
	PYTHONPATH=$(OLDEST_DIR) $(BIN)/python -m pytest -q $(LOADER_TESTS)

## make lab: JupyterLab on the notebooks, each on its default offline model (toy or tiny, see
## demo); VLTOOLS_MODEL=OpenGVLab/InternVL2-1B (or toy, tiny, a folder) runs all on one
lab: $(STAMP)
	$(if $(VLTOOLS_MODEL),VLTOOLS_MODEL=$(VLTOOLS_MODEL) ,)$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

## make bench: every benchmark (add QUICK=1 for the quick mode)
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build
