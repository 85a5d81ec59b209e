# `make test` and `make demo` each create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zdk-installed
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: test demo bench data lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[spark,tf,test]'
	touch $(STAMP)

# The demo's data set is a Debian package; without root it falls back to sklearn digits.
data:
	@if [ ! -d $(FASHION) ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist || \
		{ apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } || \
		echo "dataset-fashion-mnist could not be installed; the demo will use sklearn digits"; \
	fi

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

demo: $(STAMP) data
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/ps_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
