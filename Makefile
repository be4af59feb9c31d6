# Veil developer targets. `make help` lists them.
PY ?= .venv/bin/python
TORCH ?= torch==2.13.0

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q "$(TORCH)"
	.venv/bin/pip install -q -e '.[dev,postgres,triton,data,tracing]'
	touch $@

setup: .venv/.installed ## create .venv and install veil with every extra (CPU torch)

proto: setup ## regenerate services/_proto from proto/ (committed)
	$(PY) -m services._proto.generate

proto-check: setup ## fail if services/_proto drifts from proto/
	$(PY) -m services._proto.generate --check

lint: setup ## ruff lint + format check, mypy on services/
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

demo: setup ## set up, then start the local stack and call it over gRPC
	.venv/bin/veil demo

test: setup ## set up, then lint and run every test but the gpu ones
	$(MAKE) --no-print-directory lint proto-check
	$(PY) -m pytest

.PHONY: help setup proto proto-check lint test demo

# -- images (k8s/images/, k8s/README.md "Images") ------------------------------------------
constraints: setup ## regenerate k8s/images/constraints.txt, the images' pins (needs PyPI)
	$(PY) k8s/images/constraints.py --torch "$(TORCH)"

lock-check: setup ## fail if k8s/images/constraints.txt lags pyproject.toml (offline)
	$(PY) k8s/images/constraints.py --check

images-lint: setup ## hadolint on the Dockerfiles of k8s/images/
	.venv/bin/hadolint k8s/images/Dockerfile.*

.PHONY: constraints lock-check images-lint
