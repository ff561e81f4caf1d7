# nodelet: developer and CI entry points. GNU make, Debian 12, run as root.
#
#   make deps    system packages (only the missing ones) + .venv with nodelet and its dev tools
#   make run     run the agent in the foreground on ./static-pods
#   make test    every test tier (unit, system, e2e); most need root
#   make envtest  etcd, kubectl and a kube-apiserver built from Debian's source, for the e2e tier
#   make install  nodelet as a systemd service: venv in /opt/nodelet, unit, /etc/default/nodelet
#   make demo-control-plane  etcd + kube-apiserver as static pods of nodelet, in the background
#   make demo-control-plane-stop  stop that demo's agent and pods (by pid)
#   make lint    ruff check, ruff format --check, mypy, import-linter layer contracts
#   make bench   run every bench/*.py
#   make mutation  mutation check of the pure modules against the unit tests, prints the score
#   make clean   remove .venv and caches
#
# Variables: PYTHON (interpreter that creates .venv), NODELET_ARGS (extra `nodelet run` flags,
# e.g. NODELET_ARGS='--root-dir /tmp/nl/lib --run-dir /tmp/nl/run --pod-logs-dir /tmp/nl/logs'),
# POD_MANIFEST_PATH (default ./static-pods), PYTEST_ARGS (e.g. PYTEST_ARGS='-m unit -x'),
# MUTATION_MIN (the score `make mutation` must reach, in %), ENVTEST_DIR (the machine-wide cache of
# the e2e tier's API server build).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the agent and its tests use: ip, ps, mount tools, and Debian's own python3
# (/usr/bin/python3), which the bundled pods and the test containers run on the host image;
# python3-venv for `make install`'s venv; systemd for `systemd-analyze verify` of the unit.
# nftables: the built-in pod network's NAT; containernetworking-plugins (and the iptables it
# pulls in): CNI mode and its tests; libseccomp2: compiling seccomp profiles (pyseccomp).
# zstd: zstd image layers; busybox-static, skopeo, docker-registry: the image tests' images,
# archives and loopback registry.
APT_PACKAGES ?= iproute2 procps util-linux python3 python3-venv systemd nftables iptables \
	containernetworking-plugins libseccomp2 zstd busybox-static skopeo docker-registry

POD_MANIFEST_PATH ?= $(CURDIR)/static-pods
NODELET_ARGS ?=
PYTEST_ARGS ?=
MUTATION_MIN ?= 90
# Outside the checkout, so every clone and CI run on this machine shares one ≈ 4 min build.
ENVTEST_DIR ?= /var/cache/nodelet/envtest
KUBE_VERSION := 1.20.2
ENVTEST_BIN := $(ENVTEST_DIR)/$(KUBE_VERSION)

export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps system-deps envtest run test lint bench mutation clean demo-control-plane \
	demo-control-plane-stop

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

deps: $(STAMP)

# Installs only what is missing; `apt-get update` runs once, and only when something is.
# python3-venv: Debian's python3 cannot create a venv without it (ensurepip lives there); a
# pyenv or self-built Python has ensurepip and needs nothing.
system-deps:
	@missing=""; \
	command -v $(PYTHON) >/dev/null || missing="$$missing python3 python3-venv"; \
	if command -v $(PYTHON) >/dev/null && ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
		missing="$$missing python3-venv"; \
	fi; \
	for pkg in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'ok installed' \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "make deps: missing Debian packages:$$missing (run as root to install them)" >&2; \
			exit 1; \
		fi; \
		echo "make deps: installing$$missing"; \
		apt-get update -qq; \
		apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python: | system-deps
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: deps
	$(BIN)/nodelet run --pod-manifest-path $(POD_MANIFEST_PATH) $(NODELET_ARGS)

# The e2e fixture (tests/e2e/apiserver.py) finds the binaries through NODELET_ENVTEST_BIN.
test: deps
	@[ -x $(ENVTEST_BIN)/kube-apiserver ] && [ -x $(ENVTEST_BIN)/kubectl ] \
		&& command -v etcd >/dev/null || $(MAKE) --no-print-directory envtest
	NODELET_ENVTEST_BIN=$(ENVTEST_BIN) $(BIN)/pytest $(PYTEST_ARGS)

# Installs etcd and Debian's kubectl when missing and builds kube-apiserver $(KUBE_VERSION) from
# Debian's source package into $(ENVTEST_BIN) once per machine; tests/e2e/envtest/ says how.
envtest:
	tests/e2e/envtest/envtest.sh $(ENVTEST_DIR) $(KUBE_VERSION)

# A self-hosted control plane (static-pods/control-plane/; README, "Self-hosted control
# plane"): nodelet in the background on an empty node, running etcd and kube-apiserver as
# static pods and registering with that API server. DEMO_DIR holds the PKI, kubeconfigs, rendered manifests, etcd's data and
# the agent's dirs, log and pid file; NODELET_ARGS is passed on as for `run`.
DEMO_DIR ?= /var/lib/nodelet-demo
DEMO_NODE ?= nodelet-demo
DEMO_PY := $(BIN)/python -m tests.e2e.controlplane --dir $(DEMO_DIR)
DEMO_KUBECTL := $(ENVTEST_BIN)/kubectl --kubeconfig $(DEMO_DIR)/admin.kubeconfig

demo-control-plane: deps
	@[ -x $(ENVTEST_BIN)/kube-apiserver ] && [ -x $(ENVTEST_BIN)/kubectl ] \
		&& command -v etcd >/dev/null || $(MAKE) --no-print-directory envtest
	$(DEMO_PY) --node $(DEMO_NODE) --envtest-bin $(ENVTEST_BIN) setup
	setsid $(BIN)/nodelet run --pod-manifest-path $(DEMO_DIR)/manifests \
		--kubeconfig $(DEMO_DIR)/node.kubeconfig --hostname-override $(DEMO_NODE) \
		--node-ip 127.0.0.1 --root-dir $(DEMO_DIR)/root --run-dir $(DEMO_DIR)/run \
		--pod-logs-dir $(DEMO_DIR)/logs $(NODELET_ARGS) \
		</dev/null >>$(DEMO_DIR)/nodelet.log 2>&1 & echo $$! > $(DEMO_DIR)/nodelet.pid
	@echo "demo: agent pid $$(cat $(DEMO_DIR)/nodelet.pid), log $(DEMO_DIR)/nodelet.log; waiting"
	$(DEMO_PY) --node $(DEMO_NODE) --envtest-bin $(ENVTEST_BIN) wait || { \
		tail -n 20 $(DEMO_DIR)/nodelet.log; \
		echo "demo: not ready; make demo-control-plane-stop cleans up" >&2; exit 1; }
	$(DEMO_KUBECTL) get nodes,pods -A -o wide
	@echo "demo: kubectl is $(DEMO_KUBECTL)"
	@echo "demo: stop it with make demo-control-plane-stop DEMO_DIR=$(DEMO_DIR)"

demo-control-plane-stop: deps
	$(DEMO_PY) stop

# nodelet as a systemd service (README, "Install as a systemd service"). Debian 12's python3 is
# externally managed (PEP 668): pip may not write to its site-packages, so nodelet and its
# dependencies go into a venv of their own, NODELET_HOME, with $(PREFIX)/bin/nodelet a link to it;
# the unit goes to SYSTEMD_UNIT_DIR (its ExecStart set to that link), and /etc/default/nodelet
# is written only when missing (it is the admin's). Re-running it upgrades nodelet in place; then
# `systemctl restart nodelet` replaces the agent, never the pods. DESTDIR stages it all under
# another root (packaging): the venv's scripts are rewritten to their final path. PIP_INSTALL_ARGS:
# extra pip flags (e.g. --no-index --find-links DIR on a node without a registry). The venv is
# made by Debian's own python3 (INSTALL_PYTHON), which apt keeps patched, not by whatever python3
# comes first in PATH.
INSTALL_PYTHON ?= /usr/bin/python3
PREFIX ?= /usr/local
NODELET_HOME ?= /opt/nodelet
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
PIP_INSTALL_ARGS ?=
STAGED_HOME := $(DESTDIR)$(NODELET_HOME)

.PHONY: install
install: | system-deps
	install -d $(STAGED_HOME) $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_UNIT_DIR) \
		$(DESTDIR)/etc/default $(DESTDIR)/etc/kubernetes/manifests
	[ -x $(STAGED_HOME)/bin/python ] || $(INSTALL_PYTHON) -m venv $(STAGED_HOME)
	$(STAGED_HOME)/bin/python -m pip install --quiet --upgrade $(PIP_INSTALL_ARGS) .
	@if [ -n "$(DESTDIR)" ]; then \
		find $(STAGED_HOME)/bin $(STAGED_HOME)/pyvenv.cfg -maxdepth 1 -type f \
			-exec grep -lI -F '$(STAGED_HOME)' {} + \
			| xargs -r sed -i 's|$(STAGED_HOME)|$(NODELET_HOME)|g'; \
	fi
	ln -sfn $(NODELET_HOME)/bin/nodelet $(DESTDIR)$(PREFIX)/bin/nodelet
	sed 's|^ExecStart=/usr/local/bin/nodelet |ExecStart=$(PREFIX)/bin/nodelet |' \
		systemd/nodelet.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/nodelet.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/nodelet.service
	[ -e $(DESTDIR)/etc/default/nodelet ] \
		|| install -m 0644 systemd/nodelet.default $(DESTDIR)/etc/default/nodelet
	@[ -n "$(DESTDIR)" ] || echo "make install: now systemctl daemon-reload && systemctl enable --now nodelet"

# Runs all three checks and fails if any did, so one run shows every finding.
lint: deps
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/lint-imports --no-cache || status=1; \
	exit $$status

bench: deps
	@for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(BIN)/python "$$script"; \
	done

# mutmut over the modules [tool.mutmut] in pyproject.toml lists, running only the unit tests (no
# root needed). Starts from scratch every time, so the score is never a stale cache's; progress
# goes to mutants/run.log. Unit tests that fail before any mutation (open bugs: `make test`
# shows them) are named and left out, since mutmut needs a passing baseline.
# Survivors: .venv/bin/mutmut results, then .venv/bin/mutmut show NAME.
mutation: deps
	rm -rf mutants
	mkdir -p mutants
	$(BIN)/python tests/mutation.py known-failures > mutants/pytest-addopts
	@echo "make mutation: running mutmut (a few minutes; progress in mutants/run.log)"
	PYTEST_ADDOPTS="$$(cat mutants/pytest-addopts)" $(BIN)/mutmut run > mutants/run.log 2>&1 \
		|| { tail -c 3000 mutants/run.log; exit 1; }
	$(BIN)/mutmut export-cicd-stats > /dev/null
	$(BIN)/python tests/mutation.py score $(MUTATION_MIN)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info mutants
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
