# livesync: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing (idempotently; quick when everything is there).

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
E2E       := --manifest-path tests/e2e/Cargo.toml
# Parallel e2e tests inside one test binary (each test has its own databases).
E2E_THREADS ?= 2

.PHONY: all setup build install demo demo-stop test unit e2e lint bench clean

all: install

## setup: Debian packages, cargo-pgrx 0.18.0, TimescaleDB (idempotent)
setup:
	@bash scripts/setup.sh

## install: build livesync (release) and install it into PostgreSQL 15
install: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG)

## demo: a local source + TimescaleDB target, synced live by livesync
demo: install
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

## test: everything — unit tests, lints, and end-to-end tests against real clusters
test: install
	$(MAKE) --no-print-directory lint unit e2e

unit:
	cargo test --lib

lint:
	cargo fmt --all -- --check
	cargo fmt $(E2E) --all -- --check
	cargo clippy --lib --tests -- -D warnings
	cargo clippy $(E2E) --tests -- -D warnings

e2e:
	cargo test $(E2E) --no-fail-fast -- --test-threads=$(E2E_THREADS)

## bench: livesync versus native logical replication, same machine, same run
bench: install
	bash bench/run.sh

clean:
	cargo clean
	cargo clean $(E2E)
