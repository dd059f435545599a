# Two commands matter (see README): `make demo` runs the main job, `make test` installs
# everything and runs all tests. Both work on a fresh Linux machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
WORKER_ENV := $(CURDIR)/.worker-env
DEV_PY := $(VENV)/bin/python
BLENDER_EXT := $(VENV)/lib/python3.11/site-packages/bpy/5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' blender_manifest.toml)
ZIP := dist/da3_reconstruct-$(VERSION).zip
# The demo uses the machine's best torch build; tests need only the small CPU one.
TORCH ?= auto

.PHONY: test dev dev-bpy42 worker reference blender-apps lint pytest pytest-bpy42 build validate demo clean

test: TORCH = cpu
test: dev dev-bpy42 worker reference blender-apps lint pytest pytest-bpy42

dev: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(DEV_PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Blender 4.2 LTS as a Python module: the manifest's minimum, with numpy 1.x.
VENV42 := .venv-bpy42
dev-bpy42: $(VENV42)/.installed

$(VENV42)/.installed: requirements-bpy42.txt
	$(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q -r requirements-bpy42.txt
	touch $@

# Real Blender applications (Debian's 4.3.2 and 5.2.2 LTS) in chroots, for the tests that click,
# drop and cancel in a real UI. Needs root; without it the tests say why they skip, and
# BLENDER=/path/to/blender runs them on any Blender instead.
BLENDER_CHROOTS ?= $(CURDIR)/.cache/blender
blender-apps:
	@if [ -n "$$BLENDER" ]; then echo "using BLENDER=$$BLENDER"; \
	elif [ "$$(id -u)" != 0 ]; then echo "blender-apps: not root, so no chroots; set BLENDER=/path/to/blender"; \
	else scripts/provision_blender.sh trixie $(BLENDER_CHROOTS)/trixie & trixie=$$!; \
	     scripts/provision_blender.sh sid $(BLENDER_CHROOTS)/sid || exit 1; wait $$trixie; fi

# vendor_install is idempotent: a second run checks the environment and returns.
worker:
	$(PYTHON) vendor_install.py --target $(WORKER_ENV) --torch $(TORCH)

# DA3's own input processor and exporter need torchvision + imageio, which the worker does without.
# Tests that compare our pre-processing and files with the library's load them from this folder.
REFERENCE := $(CURDIR)/.cache/da3-reference
reference: $(REFERENCE)/.installed

$(REFERENCE)/.installed: requirements-reference.txt
	$(WORKER_ENV)/bin/python -m pip install -q --no-deps --target $(REFERENCE) -r requirements-reference.txt
	touch $@

lint: dev
	$(VENV)/bin/ruff check .

# The Blender-side tests again on bpy 4.2 (the worker-side ones need no Blender).
BLENDER_SIDE_TESTS := tests/test_extension.py tests/test_import_prediction.py tests/test_import_tsdf.py \
	tests/test_set_scale.py tests/test_panel.py tests/test_drop.py tests/test_reconstruct.py tests/test_cli.py
pytest-bpy42: dev-bpy42 worker
	DA3_WORKER_PYTHON=$(WORKER_ENV)/bin/python $(VENV42)/bin/python -m pytest -p no:cacheprovider \
	$(BLENDER_SIDE_TESTS)

# pytest exits 5 when it collects nothing; that is reported, not hidden behind a red build.
pytest: dev
	DA3_WORKER_PYTHON=$(WORKER_ENV)/bin/python DA3_TORCHVISION_PATH=$(REFERENCE) DA3_BLENDER_CHROOTS=$(BLENDER_CHROOTS) \
	$(DEV_PY) -m pytest $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

validate: dev
	$(DEV_PY) $(BLENDER_EXT) validate .

build: validate
	mkdir -p dist
	$(DEV_PY) $(BLENDER_EXT) build --source-dir . --output-filepath $(ZIP)

# The main job: reconstruct the bundled clip into out/demo.blend and a preview out/demo.png with
# the headless command (scripts/da3_cli.py runs it on Blender as a Python module). Weights are
# read from DA3_MODELS_DIR (default .cache/models) and downloaded there on the first run.
# Blender's user files for the run stay under .cache/ too, away from the user's own Blender.
DEMO_INPUT ?= samples/courtyard.mp4
DEMO_ARGS ?= --frames 12
DA3_MODELS_DIR ?= $(CURDIR)/.cache/models

demo: dev worker
	mkdir -p out
	DA3_WORKER_PYTHON=$(WORKER_ENV)/bin/python DA3_MODELS_DIR=$(DA3_MODELS_DIR) \
	BLENDER_USER_RESOURCES=$(CURDIR)/.cache/blender-user \
	$(DEV_PY) scripts/da3_cli.py --online-mode $(DEMO_INPUT) -o out/demo.blend --render out/demo.png \
	$(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(VENV42) .worker-env .cache dist out .pytest_cache .ruff_cache
