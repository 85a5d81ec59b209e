# `make test` and `make demo` each create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zdk-installed
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: test demo bench scaling end-to-end accuracy staleness time-to-accuracy job-service data lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[spark,tf,serve,test,testing,mlflow,lab]'
	touch $(STAMP)

# The demo's data set is a Debian package; without root it falls back to sklearn digits.
data:
	@if [ ! -d $(FASHION) ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist || \
		{ apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } || \
		echo "dataset-fashion-mnist could not be installed; the demo will use sklearn digits"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

demo: $(STAMP) data
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/ps_throughput.py

# Accuracy parity of every trainer against plain keras fit (Fashion-MNIST; about an hour here).
accuracy: $(STAMP) data
	$(PY) benchmarks/accuracy.py --results benchmarks/RESULTS.md

# Whole train() calls, cold and warm, against plain keras fit in the same run (about 20 minutes here).
time-to-accuracy: $(STAMP) data
	$(PY) benchmarks/time_to_accuracy.py --results benchmarks/RESULTS.md

# How the cost grows with the model, shards, workers and rows (about 40 minutes here).
# Whole scripts against plain fit and elephas 7.3 (built into ~/.cache/zdk-benchmarks on first use).
end-to-end: $(STAMP) data
	$(PY) benchmarks/end_to_end.py --repeats 3 --png benchmarks/end_to_end.png --results benchmarks/RESULTS.md

scaling: $(STAMP)
	$(PY) benchmarks/scaling.py --axis model memory keras rows workers window

# Hermans's staleness experiment: 1-32 worker processes through the real PS, no Spark (a few minutes).
staleness: $(STAMP)
	$(PY) benchmarks/staleness.py --lr 0.3

# The job service: submit-to-first-step against a direct train(), and 401 timing (about a minute).
job-service: $(STAMP)
	$(PY) benchmarks/job_service.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
