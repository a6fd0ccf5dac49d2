# A livesync TARGET image: PostgreSQL + TimescaleDB (Apache edition) + livesync, preloaded.
#
# NOTE: this file was written without a Docker engine (none is available where livesync is
# developed), so it has not been built. It follows scripts/setup.sh and scripts/pgchroot.sh,
# whose steps are tested.
#
#   docker build -t livesync-target .                           # PostgreSQL 15
#   docker build --build-arg PG_MAJOR=17 -t livesync-target:17 .  # 17 (or 18)
#   docker run -e POSTGRES_PASSWORD=secret -p 5432:5432 livesync-target
#
# The official postgres images come with the PostgreSQL project's apt repository, which has
# the server headers of their major; TimescaleDB is built from Debian's source package:
# trixie's (2.19.3, for PostgreSQL 15 and 17) or forky's (2.31.0, the first of these to
# support 18).
ARG PG_MAJOR=15

# ---- build: livesync and TimescaleDB ----------------------------------------------------
FROM postgres:${PG_MAJOR}-bookworm AS build
ARG PG_MAJOR
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-server-dev-${PG_MAJOR} libclang-dev clang cmake build-essential \
      pkg-config bison flex libssl-dev dpkg-dev ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
RUN cargo install cargo-pgrx --version 0.18.0 --locked \
 && cargo pgrx init --pg${PG_MAJOR} /usr/lib/postgresql/${PG_MAJOR}/bin/pg_config

# TimescaleDB is not packaged for bookworm: build it from Debian's source package.
WORKDIR /build/tsdb
RUN suite=trixie; if [ "${PG_MAJOR}" -ge 18 ]; then suite=forky; fi \
 && mkdir -p lists/partial \
 && echo "deb-src http://deb.debian.org/debian $suite main" > sources.list \
 && APT="-o Dir::Etc::SourceList=/build/tsdb/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=/build/tsdb/lists" \
 && apt-get $APT update && apt-get $APT source timescaledb \
 && cd timescaledb-*/ \
 && ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DGENERATE_DOWNGRADE_SCRIPT=OFF -DPG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config \
 && make -C build -j"$(nproc)" install DESTDIR=/out

WORKDIR /build/livesync
COPY Cargo.toml Cargo.lock* livesync.control ./
COPY src ./src
COPY sql ./sql
RUN cargo pgrx package --pg-config /usr/lib/postgresql/${PG_MAJOR}/bin/pg_config \
      --features pg${PG_MAJOR} --no-default-features --out-dir /out-ls

# ---- runtime -------------------------------------------------------------------------
FROM postgres:${PG_MAJOR}-bookworm
COPY --from=build /out/ /
COPY --from=build /out-ls/ /
RUN set -e; f=/usr/share/postgresql/postgresql.conf.sample; \
    echo "shared_preload_libraries = 'timescaledb,livesync'" >> $f; \
    echo "max_worker_processes = 32" >> $f; \
    echo "wal_level = logical" >> $f; \
    echo "timescaledb.telemetry_level = off" >> $f
