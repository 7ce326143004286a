# The two commands a new machine needs: `make demo` and `make test` (`make docs` builds the documentation site).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= demo-report

.PHONY: demo test test-zoo lint install install-test browser bench docs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision pinned first so pip takes the local CPU-capable build on these machines
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1" || $(PIP) install -q "torch>=2.1" "torchvision>=0.16"
	$(PIP) install -q -e ".[all]"
	touch $@

# torchattacks (the tests' reference for DeepFool and C&W) pins an old `requests`; it needs only torch,
# numpy and scipy at import, so it goes in without its dependencies, in a step of its own
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[all,test,docs]"
	$(PIP) install -q --no-deps "torchattacks>=3.5"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test browser

# Debian's chromium + chromedriver for the browser test of the report
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium and chromium-driver for the report's browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(VENV)/bin/cnnlens demo --out $(OUT)
	@echo "open $(OUT)/index.html in a browser"

# ruff's lint and format check, no import circle in src/cnnlens (late imports too), mypy (basic); configured in pyproject.toml
# and no function over 80 lines without a "Long because" reason in its docstring (tools/code_stats.py)
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/import_graph.py --late
	PYTHONPATH=src $(PY) tools/check_imports.py
	$(PY) tools/check_layout.py
	$(PY) tools/code_stats.py --max-lines 80
	$(VENV)/bin/mypy

test: install-test lint
	$(PY) -m pytest -q

# the conformance zoo's slow architectures (tests/test_zoo.py; `make test` runs the rest and every pattern)
test-zoo: install-test
	$(PY) -m pytest -q -m zoo_slow tests/test_zoo.py

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PIP) install -q --no-deps "torchattacks>=3.5"
	$(PY) benchmarks/run.py

# the documentation site, built offline into site/ (strict: a broken reference or link fails); open site/index.html
$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install -q -e ".[all,docs]"
	touch $@

docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache site
