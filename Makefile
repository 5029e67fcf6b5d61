# The two commands in README.md: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
MLPLAT = $(PYTHON) -m mlplat.cli
HOSTS ?=
NODES ?=
PYTEST_ARGS ?=

.PHONY: help bootstrap bootstrap-test run run-kwok run-real test notebook lab-up lab-down lab-status lab-build strip

help:
	@echo "make run    the main job: every phase against the KWOK lab (plan mode), then the real-node lab (apply)"
	@echo "make test   run the whole test suite (unit, lab, notebooks, browser)"
	@echo "make notebook   JupyterLab on 127.0.0.1 with the mlplat kernel (PARAMS=file, PORT=n; after lab-up: the lab's params)"

bootstrap:
	@PYTHON=$(PYTHON) lab/bootstrap.sh

# The test suite also needs Debian's Chromium and ChromeDriver (tests/browser).
bootstrap-test:
	@PYTHON=$(PYTHON) lab/bootstrap.sh --browser

# NODES=real: also kubelet, kube-proxy and CoreDNS for kubeadm-built nodes (NODES=all: both sets).
lab-build: bootstrap
	@echo "lab build: the Go binaries of the lab cluster (cold: about 10 min; cached after)"
	$(MLPLAT) lab build $(if $(NODES),--nodes $(NODES),)

lab-up: bootstrap
	$(MLPLAT) lab up $(if $(HOSTS),--hosts $(HOSTS),)

lab-down:
	$(MLPLAT) lab down $(if $(NODES),--nodes $(NODES),)

lab-status:
	$(MLPLAT) lab status $(if $(NODES),--nodes $(NODES),)

# The main job: every phase in plan mode against the KWOK lab, then the real-node lab built for real
# (apply: containerd, kubeadm init/join, the bridge CNI, the training operator, a PyTorchJob across
# two nodes); the real-node lab stays up for inspection (make lab-down NODES=real).
run: run-kwok run-real

run-kwok: lab-up
	$(MLPLAT) run --mode plan

run-real: bootstrap
	$(MLPLAT) lab build --nodes real
	$(MLPLAT) lab up --nodes real
	$(MLPLAT) run --params .lab-real/params.yaml --mode apply --phases 00,20,30,40,50,60,90

notebook: bootstrap
	$(MLPLAT) notebook $(if $(PARAMS),--params $(PARAMS),) $(if $(PORT),--port $(PORT),)

# The suite runs both labs: the KWOK lab and the real-node lab (tests/realnodes), so it builds both sets.
test: bootstrap-test
	$(MLPLAT) lab build --nodes all
	$(PYTHON) -m pytest $(PYTEST_ARGS)
