# kms-injector: everything a newcomer needs is `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz soak bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The main job: dev KMS + agent + example app, a rotation, the app reloading; then `inject`.
demo: $(STAMP)
	$(BIN)/kms-injector demo

# The whole suite, from scratch if needed.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Longer property-based runs (admission handler, annotation parser, cache key, dev KMS bodies).
# A fuzz test runs for minutes here: the 300 s per-test limit of `make test` is raised.
fuzz: $(STAMP)
	KMS_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=3600 tests -k fuzz

# The reliability tests with longer faults: a 30 s KMS outage, 20 s fault windows, 200 SIGKILLed
# rotations (KMS_SOAK=1; `make test` runs the same tests with 12 s / 8 s / ~20 s budgets).
soak: $(STAMP)
	KMS_SOAK=1 $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800 tests/test_reliability_agent_faults.py tests/test_reliability_agent_crash.py tests/test_leaks.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

constraints: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed '1i # Pinned versions of every runtime and test dependency (pip -c constraints.txt).\n# Regenerate with: make constraints' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
