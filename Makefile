# One-command set-up: every target installs what it needs (apt, venv, pip) and is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qgis python3-qgis qgis-providers python3-gdal python3-yaml python3-matplotlib
export QT_QPA_PLATFORM ?= offscreen
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)

.PHONY: setup system-deps install demo test test-fast test-core test-qgis lint bench bench-scale bench-pointwise package clean

setup: system-deps $(VENV)/.installed

system-deps:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES) ; }
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $@

install: setup
	$(PY) resources/tools/deploy.py --enable

demo: install
	$(PY) resources/tools/demo.py

test: setup
	$(PY) -m pytest -q tests

# ruff (lint rules and formatting of the whole repository) and mypy (types of the pure core)
lint: setup
	$(VENV)/bin/ruff check mc_uncertainty_plugin tests resources
	$(VENV)/bin/ruff format --check mc_uncertainty_plugin tests resources
	$(VENV)/bin/mypy

bench: install
	$(PY) resources/tools/bench.py

# One process vs blocks on a local Dask cluster (local:1, local:2) on a 4096 px raster, and the halo overhead.
bench-scale: setup
	$(PY) resources/tools/bench_scale.py

bench-pointwise: setup
	$(PY) resources/tools/bench_pointwise.py

# the suite without the tests marked slow (new processes, real SMP models): for quick iterations
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

test-core: setup
	$(PY) -m pytest -q tests/core

test-qgis: setup
	$(PY) -m pytest -q tests/qgis

# The ZIP for Plugins > Install from ZIP: dist/mc_uncertainty_plugin-<version>.zip (standard library only).
package:
	python3 resources/tools/package.py

clean:
	rm -rf build dist demo_output .pytest_cache
