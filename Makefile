# dagcv: `make demo` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast lint format manifest images graphviz bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# Graphviz's `dot` renders graphs; installed through apt-get when missing and we are root.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing graphviz (dot) with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; rendering will fail" >&2; \
	  else echo "warning: Graphviz 'dot' not found and not root: install graphviz to render graphs" >&2; fi; }

setup: $(STAMP) graphviz

# The main job on a shipped spec: check every spec, compile one, then train an MLP on scikit-learn's bundled
# digits (no download) and print its metrics table and where the run, checkpoints and plots are.
demo: setup
	$(VENV)/bin/dagcv check specs/*.yaml
	$(VENV)/bin/dagcv compile specs/lenet_mnist.yaml -o build/lenet_mnist
	$(VENV)/bin/dagcv train specs/mlp_digits.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Everything, the slow end-to-end tests included (what CI runs), in two pytest processes.
test: setup lint
	$(PY) -m pytest -q -n 2

# Daily work: everything but the tests marked slow.
test-fast: setup lint
	$(PY) -m pytest -q -n 2 -m "not slow"

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate blocks/manifest.json, dagcv/reserved_names.json and the JSON Schema after editing a block or the
# lowered module's attributes (tests fail while they are stale).
manifest: setup
	$(PY) -m dagcv.registry
	$(PY) -c "from dagcv.names import write_reserved_names as w; print('wrote', w())"
	$(VENV)/bin/dagcv schema -o docs/dagcv.schema.json
	$(VENV)/bin/dagcv schema --sweep -o docs/dagcv.sweep.schema.json

# The pictures in the README, drawn from the shipped specs.
images: setup
	$(VENV)/bin/dagcv render specs/lenet_mnist.yaml -o docs/img/lenet_mnist.svg
	$(VENV)/bin/dagcv render specs/vqvae_mnist.yaml -o docs/img/vqvae_mnist.svg
	$(VENV)/bin/dagcv render specs/resnet18_classifier.yaml --depth 1 -o docs/img/resnet18_classifier_depth1.svg
	$(VENV)/bin/dagcv render specs/retinanet_r50_fpn.yaml -o docs/img/retinanet_r50_fpn.svg
	for s in ppo_cartpole ppo_pendulum a2c_cartpole reinforce_cartpole bc_cartpole \
	  wgan_gp_8gaussians dcgan_mnist wgan_gp_mnist cgan_mnist pix2pix_edges2digits cyclegan_digits \
	  vae_mnist vqvae_prior_mnist dvae_mnist ddpm_8gaussians ddpm_mnist dit_mnist cfg_mnist ldm_mnist; do \
	  $(VENV)/bin/dagcv render specs/$$s.yaml -o docs/img/$$s.svg || exit 1; done

bench: setup
	$(PY) tools/bench_overhead.py
	$(PY) tools/bench_render.py

clean:
	rm -rf build .pytest_cache .ruff_cache
