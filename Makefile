# livesync: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing (idempotently; quick when everything is there).

# PostgreSQL major: 15 (this machine's), 17 or 18 (Debian chroots, see scripts/pgchroot.sh).
# `PG=18 make demo` demos on 18; `PG=17 make test` tests on 17 only. Plain `make test` runs
# every major, then the cross-version pairs (what CI runs).
PG ?= 15
ifeq ($(origin PG),file)
TEST_PGS ?= 15 17 18
# source:target pairs for the core scenarios (17:17 is the whole suite on 17 above).
CROSS    ?= 15:18 18:15
else
TEST_PGS ?= $(PG)
CROSS    ?=
endif
# Where scripts/setup.sh keeps its state and the chroots (the scripts and the tests' harness
# read the same variable).
export LIVESYNC_SETUP_DIR ?= /var/tmp/livesync-setup
# 15 is this machine's; 17 and 18 are the chroots' (the harness and scripts/demo.sh agree).
pg_config  = $(if $(filter 15,$(1)),/usr/lib/postgresql/15/bin/pg_config,$(LIVESYNC_SETUP_DIR)/pg$(1)/pg_config)
# Not taken from the environment: a PG_CONFIG exported there would install every major's
# build into one server. (`make install PG_CONFIG=...` still overrides it.)
PG_CONFIG := $(call pg_config,$(PG))
E2E       := --manifest-path tests/e2e/Cargo.toml
# Parallel e2e tests inside one test binary (each test has its own databases).
E2E_THREADS ?= 2
# The e2e binaries that make up the core scenarios of a cross-version pair.
CROSS_TESTS := --test sync --test changes --test versions

.PHONY: all setup build install demo demo-stop test unit e2e cross lint bench clean

all: install

## setup: Debian packages, cargo-pgrx 0.18.0, TimescaleDB; chroots for PG 17/18 (idempotent)
setup:
	@bash scripts/setup.sh $(PG)

## install: build livesync (release) and install it into PostgreSQL $(PG)
install: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG)

## demo: a local source + TimescaleDB target, synced live by livesync
demo: install
	@PG=$(PG) bash scripts/demo.sh

demo-stop:
	@PG=$(PG) bash scripts/demo.sh stop

## test: everything: lints, unit tests, and end-to-end tests against real clusters, on
## every major in TEST_PGS, then the cross-version pairs in CROSS
test:
	@for v in $(TEST_PGS); do $(MAKE) --no-print-directory install PG=$$v || exit 1; done
	$(MAKE) --no-print-directory lint unit e2e cross

unit:
	cargo test --lib

lint:
	cargo fmt --all -- --check
	cargo fmt $(E2E) --all -- --check
	@for v in $(TEST_PGS); do \
	  echo "cargo clippy (pg$$v)"; \
	  cargo clippy --lib --tests --no-default-features --features pg$$v -- -D warnings || exit 1; \
	done
	cargo clippy $(E2E) --tests -- -D warnings

# Every e2e binary once per major; a failure on one major does not hide the others'.
e2e:
	@failed=; for v in $(TEST_PGS); do \
	  echo "== e2e: source and target on PostgreSQL $$v"; \
	  LIVESYNC_E2E_PG=$$v cargo test $(E2E) --no-fail-fast -- --test-threads=$(E2E_THREADS) \
	    || failed="$$failed $$v"; \
	done; [ -z "$$failed" ] || { echo "e2e failed on PostgreSQL:$$failed"; exit 1; }

# The core scenarios with the source on one major and the target on another.
cross:
	@failed=; for p in $(CROSS); do \
	  s=$${p%:*}; t=$${p#*:}; \
	  echo "== e2e: source on PostgreSQL $$s, target on PostgreSQL $$t"; \
	  LIVESYNC_E2E_SOURCE_PG=$$s LIVESYNC_E2E_PG=$$t cargo test $(E2E) --no-fail-fast \
	    $(CROSS_TESTS) -- --test-threads=$(E2E_THREADS) || failed="$$failed $$p"; \
	done; [ -z "$$failed" ] || { echo "cross-version e2e failed for:$$failed"; exit 1; }

## bench: livesync versus native logical replication, same machine, same run
bench: install
	bash bench/run.sh

clean:
	cargo clean
	cargo clean $(E2E)
