# A livesync TARGET image: PostgreSQL 15 + TimescaleDB (Apache edition) + livesync, preloaded.
#
# NOTE: this file was written without a Docker engine (none is available where livesync is
# developed), so it has not been built. It follows scripts/setup.sh, whose steps are tested.
#
#   docker build -t livesync-target .
#   docker run -e POSTGRES_PASSWORD=secret -p 5432:5432 livesync-target

# ---- build: livesync and TimescaleDB ----------------------------------------------------
FROM rust:1.95-bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-15 postgresql-server-dev-15 libclang-dev clang cmake build-essential \
      pkg-config bison flex libssl-dev dpkg-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-pgrx --version 0.18.0 --locked \
 && cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config

# TimescaleDB is not packaged for bookworm: build it from Debian trixie's source package.
WORKDIR /build/tsdb
RUN mkdir -p lists/partial \
 && echo "deb-src http://deb.debian.org/debian trixie main" > sources.list \
 && APT="-o Dir::Etc::SourceList=/build/tsdb/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=/build/tsdb/lists" \
 && apt-get $APT update && apt-get $APT source timescaledb \
 && cd timescaledb-*/ \
 && ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DGENERATE_DOWNGRADE_SCRIPT=OFF -DPG_CONFIG=/usr/lib/postgresql/15/bin/pg_config \
 && make -C build -j"$(nproc)" install DESTDIR=/out

WORKDIR /build/livesync
COPY Cargo.toml Cargo.lock* livesync.control ./
COPY src ./src
COPY sql ./sql
RUN cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir /out-ls

# ---- runtime -------------------------------------------------------------------------
FROM postgres:15-bookworm
COPY --from=build /out/ /
COPY --from=build /out-ls/ /
RUN set -e; f=/usr/share/postgresql/postgresql.conf.sample; \
    echo "shared_preload_libraries = 'timescaledb,livesync'" >> $f; \
    echo "max_worker_processes = 32" >> $f; \
    echo "wal_level = logical" >> $f; \
    echo "timescaledb.telemetry_level = off" >> $f
