# Porin: the two set-up-and-go commands are `make demo` and `make test`.
# Every target does its own set-up (idempotent) on Debian 12 as root.

VENV        ?= .venv
PY          := $(VENV)/bin/python
PREFIX      ?= /usr/local
INSTALL_VENV ?= /opt/porin/venv
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
PYTEST_ARGS ?=

.PHONY: setup test lint unit bpf-test integration demo bench install uninstall clean

setup:
	@hack/setup.sh $(VENV) dev

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest -q $(PYTEST_ARGS) tests

unit: setup
	$(VENV)/bin/pytest -q tests/unit

bpf-test: setup
	$(VENV)/bin/pytest -q tests/bpf

integration: setup
	$(VENV)/bin/pytest -q tests/integration

demo: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH hack/demo.sh

bench: setup
	PORIN_VENV=$(CURDIR)/$(VENV) hack/bench $(BENCH_ARGS)

install:
	@hack/setup.sh $(INSTALL_VENV) install
	install -d $(CNI_BIN_DIR) $(CNI_CONF_DIR) $(PREFIX)/bin
	hack/cni-launcher.sh $(INSTALL_VENV)/bin/python3 \
	  "$$($(INSTALL_VENV)/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  $(CNI_BIN_DIR)/porin
	install -m 0644 hack/05-porin.conflist $(CNI_CONF_DIR)/05-porin.conflist
	ln -sfn $(INSTALL_VENV)/bin/porin $(PREFIX)/bin/porin
	ln -sfn $(INSTALL_VENV)/bin/porin-agent $(PREFIX)/bin/porin-agent
	@echo "installed: $(CNI_BIN_DIR)/porin, $(CNI_CONF_DIR)/05-porin.conflist, $(PREFIX)/bin/porin{,-agent}"
	@echo "start the agent with: porin-agent [--config FILE]"

uninstall:
	@if [ -x $(INSTALL_VENV)/bin/porin-agent ]; then $(INSTALL_VENV)/bin/porin-agent --uninstall; fi
	rm -f $(CNI_BIN_DIR)/porin $(CNI_CONF_DIR)/05-porin.conflist
	rm -f $(PREFIX)/bin/porin $(PREFIX)/bin/porin-agent
	rm -rf $(dir $(INSTALL_VENV))
	@echo "porin removed from this node"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
