# Ringkeeper developer tasks. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
export PATH := /usr/local/go/bin:$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install everything the tests and the demo need (pip, apt, Go-built binaries)
	hack/setup.sh

.PHONY: k8s-bin
k8s-bin: ## build (or reuse) etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	hack/build-k8s.sh

.PHONY: crds
crds: ## regenerate crds/ and the chart's CRDs from the models
	$(PYTHON) -m ringkeeper crds

.PHONY: lint
lint: ## ruff, mypy --strict, and a check that the CRDs match the models
	ruff check operator tools tests
	mypy
	$(PYTHON) -m ringkeeper crds --check

.PHONY: test
test: ## every test: unit, PostgreSQL and local-cluster (runs setup first; stops a running demo cluster)
	set -o pipefail; hack/setup.sh | sed 's/^/    /'
	hack/test-preflight.sh
	RINGKEEPER_REQUIRE_CLUSTER=$${RINGKEEPER_REQUIRE_CLUSTER:-1} $(PYTHON) -m pytest -q --durations=30

.PHONY: test-unit
test-unit: ## the fast tests only (no servers, no cluster)
	$(PYTHON) -m pytest -q tests/unit

.PHONY: demo
demo: ## the main job on the built-in local cluster (see README)
	hack/demo.sh

FAILOVER_SCENARIOS ?= kill replicas-cut frozen-primary asymmetric local-kill operator-kill
.PHONY: bench-failover
bench-failover: ## outage and lost commits per scenario, one JSON line each: kill (10 primary kills, local cluster), replicas-cut, frozen-primary, asymmetric, local-kill and operator-kill (local servers, with rejoins by rewind); FAILOVER_SCENARIOS=... picks
	@set -e; for s in $(FAILOVER_SCENARIOS); do \
	  if [ "$$s" = kill ]; then \
	    hack/setup.sh >/dev/null; \
	    $(PYTHON) -m ringkeeper_devcluster up; \
	    KUBECONFIG=$$($(PYTHON) -m ringkeeper_devcluster kubeconfig) $(PYTHON) -m ringkeeper crds --check >/dev/null; \
	    hack/install-operator.sh; \
	    KUBECONFIG=$$($(PYTHON) -m ringkeeper_devcluster kubeconfig) $(PYTHON) bench/failover.py --scenario kill; \
	  else \
	    $(PYTHON) bench/failover.py --scenario $$s; \
	  fi; \
	done

.PHONY: bench-ring
bench-ring: ## one link vs native logical replication, 4-member ring latency, pgbench capture overhead vs native (~7 min, local servers)
	$(PYTHON) bench/ring.py

.PHONY: bench-satellite
bench-satellite: ## satellite outage: OFFLINE_ROWS (100,000) written at the satellite and at the ring while cut off, catch-up rows/s, parent WAL retained, satellite RSS, lost (local servers)
	$(PYTHON) bench/satellite.py

.PHONY: bench-verify
bench-verify: ## full vs naive vs incremental verification of 10M rows between PostgreSQL 15 and 18
	$(PYTHON) bench/verify.py

.PHONY: demo-down
demo-down: ## stop the demo's local cluster
	$(PYTHON) -m ringkeeper_devcluster down

.PHONY: dev-up
dev-up: ## start the local cluster and print its KUBECONFIG
	$(PYTHON) -m ringkeeper_devcluster up

.PHONY: dev-down
dev-down: ## stop the local cluster
	$(PYTHON) -m ringkeeper_devcluster down
