# Everything a fresh machine needs: `make demo` and `make test` create the
# environment on first use (torch comes from the local wheel cache where present).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test lint bench proto clean caffe-reference gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test,dev]'
	touch $(STAMP)

install: $(STAMP)

# Runs the main job on embedded defaults; on your own release files:
#   make demo CAFFEMODEL=SE-ResNeXt-50.caffemodel PROTOTXT=SE-ResNeXt-50.prototxt MODEL=se_resnext50
demo: $(STAMP)
	$(PY) -m senet_repro.demo $(if $(CAFFEMODEL),--caffemodel $(CAFFEMODEL)) \
		$(if $(PROTOTXT),--prototxt $(PROTOTXT)) $(if $(MODEL),--model $(MODEL)) \
		--out demo-out

# PASSIVE: idle OpenMP threads sleep instead of spinning, which otherwise slows torch
# 3-4x on a 2-core machine whenever a second process (loader, OpenCV, torchrun) runs.
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# BVLC Caffe (with SENet's Axpy layer) and its dump tool, the reference the tests compare against,
# built by ../shared/caffe-reference/build.sh into CAFFE_REFERENCE_HOME (about 6 minutes; apt-get
# for its packages). A no-op when built and newer than its sources. Not needed to install or run.
REPO_DIR := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
SHARED_DIR ?= $(or $(SENET_REPRO_SHARED),$(dir $(REPO_DIR))shared)
CAFFE_REFERENCE_HOME ?= $(HOME)/.cache/caffe-reference
CAFFE_REFERENCE_SRC := $(SHARED_DIR)/caffe-reference
CAFFE_REFERENCE := $(CAFFE_REFERENCE_HOME)/reference_forward

caffe-reference: $(CAFFE_REFERENCE)

$(CAFFE_REFERENCE): $(wildcard $(CAFFE_REFERENCE_SRC)/build.sh $(CAFFE_REFERENCE_SRC)/*.cpp \
		$(CAFFE_REFERENCE_SRC)/*.tar.gz $(CAFFE_REFERENCE_SRC)/axpy/*)
	@test -x $(CAFFE_REFERENCE_SRC)/build.sh || \
		{ echo "no $(CAFFE_REFERENCE_SRC)/build.sh: set SENET_REPRO_SHARED to the shared folder" >&2; exit 1; }
	CAFFE_REFERENCE_HOME=$(CAFFE_REFERENCE_HOME) $(CAFFE_REFERENCE_SRC)/build.sh
	touch $@

# The gates CI holds every change to (config in pyproject.toml; `pre-commit install` runs
# the same tools before each commit).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# On a machine with one GPU: every CUDA test, then bench/results/gpu.md (under 8 minutes).
gpu-check: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m bench.gpu_check

bench: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m bench.run_all

# Regenerates prototxt/caffe_pb2.py and its typed stub caffe_pb2.pyi from prototxt/caffe.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprototxt --python_out=prototxt --pyi_out=prototxt prototxt/caffe.proto

clean:
	rm -rf $(VENV) demo-out build *.egg-info
