# The README's two commands are `make demo` and `make test`; both set up what is missing first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vltools-installed

.PHONY: demo test lab bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vltools needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make demo: execute every notebook headless on the tiny model (VLTOOLS_MODEL chooses another,
## e.g. toy), write HTML to build/notebooks/
demo: $(STAMP)
	VLTOOLS_MODEL=$(or $(VLTOOLS_MODEL),tiny) $(BIN)/python -m vltools.demo

## make test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## make lab: JupyterLab on the notebooks (the tiny model unless VLTOOLS_MODEL names another, e.g.
## toy; toy becomes the default once its retrained weights meet issue 18's targets)
lab: $(STAMP)
	VLTOOLS_MODEL=$(or $(VLTOOLS_MODEL),tiny) $(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

## make bench: every benchmark (add QUICK=1 for the quick mode)
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build
