# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv with everything E2X needs (first run: a few minutes), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean-runs

setup: $(VENV)/.e2x-installed

$(VENV)/.e2x-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	# tidecv: the oracle of tests/test_tide.py. --no-deps because it requires opencv-python,
	# which would replace FiftyOne's opencv-python-headless; 1.0.1 is its last release (2021)
	$(BIN)/pip install --disable-pip-version-check --no-deps -q tidecv==1.0.1
	# vision-explanation-methods: Microsoft's D-RISE, compared by e2x_bench/explain/msdrise.py.
	# --no-deps because it pins matplotlib<3.7 and requires ml-wrappers, which only its
	# DRISE_runner needs (its explanations.drise needs torch, torchvision, pandas, PIL, tqdm)
	$(BIN)/pip install --disable-pip-version-check --no-deps -q vision-explanation-methods==0.1.1
	$(BIN)/python -m e2x_pipeline.check_install
	touch $@

demo: setup
	$(BIN)/e2x demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

clean-runs:
	rm -rf runs .e2x
