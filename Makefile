# kms-injector: everything a newcomer needs is `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz soak bench lint constraints clean

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

# Longer property-based run of the admission handler and annotation parser.
fuzz: $(STAMP)
	KMS_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider tests -k fuzz

bench: $(STAMP)
	$(BIN)/python bench/run.py

constraints: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed '1i # Pinned versions of every runtime and test dependency (pip -c constraints.txt).\n# Regenerate with: make constraints' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
