# The two commands in README.md: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
MLPLAT = $(PYTHON) -m mlplat.cli
HOSTS ?=
PYTEST_ARGS ?=

.PHONY: help bootstrap bootstrap-test run test notebook lab-up lab-down lab-status lab-build strip

help:
	@echo "make run    bring up the local lab and run every phase against it (plan mode)"
	@echo "make test   run the whole test suite (unit, lab, notebooks, browser)"
	@echo "make notebook   JupyterLab on 127.0.0.1 with the mlplat kernel (PARAMS=file, PORT=n; after lab-up: the lab's params)"

bootstrap:
	@PYTHON=$(PYTHON) lab/bootstrap.sh

# The test suite also needs Debian's Chromium and ChromeDriver (tests/browser).
bootstrap-test:
	@PYTHON=$(PYTHON) lab/bootstrap.sh --browser

lab-build: bootstrap
	@echo "lab build: the Go binaries of the lab cluster (cold: about 10 min; cached after)"
	$(MLPLAT) lab build

lab-up: bootstrap
	$(MLPLAT) lab up $(if $(HOSTS),--hosts $(HOSTS),)

lab-down:
	$(MLPLAT) lab down

lab-status:
	$(MLPLAT) lab status

run: lab-up
	$(MLPLAT) run --mode plan

notebook: bootstrap
	$(MLPLAT) notebook $(if $(PARAMS),--params $(PARAMS),) $(if $(PORT),--port $(PORT),)

test: bootstrap-test lab-build
	$(PYTHON) -m pytest $(PYTEST_ARGS)
