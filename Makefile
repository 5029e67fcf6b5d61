# The two commands in README.md: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
HOSTS ?=
PYTEST_ARGS ?=

.PHONY: help bootstrap run test lab-up lab-down lab-status lab-build strip

help:
	@echo "make run    bring up the local lab and run every phase against it (plan mode)"
	@echo "make test   run the whole test suite (unit, lab, notebooks)"

bootstrap:
	@lab/bootstrap.sh

lab-build: bootstrap
	@echo "lab build: the Go binaries of the lab cluster (cold: about 10 min; cached after)"
	mlplat lab build

lab-up: bootstrap
	mlplat lab up $(if $(HOSTS),--hosts $(HOSTS),)

lab-down:
	mlplat lab down

lab-status:
	mlplat lab status

run: lab-up
	mlplat run --mode plan

test: bootstrap lab-build
	$(PYTHON) -m pytest $(PYTEST_ARGS)
