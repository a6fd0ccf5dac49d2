#!/usr/bin/env bash
# Install everything livesync needs to build, test and demo, on a fresh Debian bookworm
# machine. Idempotent: every step checks first, so a second run takes a few seconds.
#
#   - Debian packages: PostgreSQL 15 server + headers, libclang (bindgen), cmake, ...
#   - cargo-pgrx 0.18.0 (pinned: the machine's rustc is 1.95, pgrx 0.19 needs 1.96)
#   - TimescaleDB (Apache edition), built from Debian trixie's source package, because
#     bookworm does not package it.
#   - for each other PostgreSQL major named on the command line (`scripts/setup.sh 17 18`):
#     a Debian chroot with that server and TimescaleDB (scripts/pgchroot.sh), registered
#     with pgrx so that `cargo pgrx install --pg-config <its wrapper>` builds for it.
set -euo pipefail

OTHER_MAJORS=()
for v in "$@"; do
  case "$v" in
    15) ;;
    17 | 18) OTHER_MAJORS+=("$v") ;;
    *) echo "scripts/setup.sh: PostgreSQL $v is not supported (15, 17, 18)" >&2; exit 2 ;;
  esac
done

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGRX_VERSION=0.18.0
STATE_DIR=${LIVESYNC_SETUP_DIR:-/var/tmp/livesync-setup}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

need_pkgs=()
for p in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang cmake \
         build-essential pkg-config bison flex libssl-dev dpkg-dev ca-certificates; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The Debian package starts a cluster on port 5432 that nothing here uses; leave it alone
# but never depend on it.

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi

if [ ! -f "$($PG_CONFIG --sharedir)/extension/timescaledb.control" ]; then
  log "building TimescaleDB from Debian trixie's source package"
  mkdir -p "$STATE_DIR/lists/partial" "$STATE_DIR/src"
  echo "deb-src http://deb.debian.org/debian trixie main" > "$STATE_DIR/sources.list"
  APT_OPTS=(-o Dir::Etc::SourceList="$STATE_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$STATE_DIR/lists")
  apt-get "${APT_OPTS[@]}" update -qq
  ( cd "$STATE_DIR/src" && rm -rf timescaledb-* && apt-get "${APT_OPTS[@]}" source -qq timescaledb )
  src=$(find "$STATE_DIR/src" -maxdepth 1 -type d -name 'timescaledb-*' | head -1)
  ( cd "$src" && PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$PATH ./bootstrap -DAPACHE_ONLY=1 \
      -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DGENERATE_DOWNGRADE_SCRIPT=OFF -DPG_CONFIG="$PG_CONFIG" >/dev/null \
    && make -C build -j"$(nproc)" install >/dev/null )
fi
log "ok: PostgreSQL $PG_MAJOR, cargo-pgrx $PGRX_VERSION, TimescaleDB $(grep default_version "$($PG_CONFIG --sharedir)/extension/timescaledb.control" | cut -d"'" -f2)"

PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
# pgrx's build checks every pg_config its config names: forget those that are gone (a
# chroot removed with /var/tmp, say); the loop below names them again when they are needed.
for v in 13 14 15 16 17 18; do
  p=$(sed -n "s/^pg$v = \"\(.*\)\"\$/\1/p" "$PGRX_CONFIG" 2>/dev/null || true)
  if [ -n "$p" ] && [ ! -x "$p" ]; then
    log "forgetting pg$v in $PGRX_CONFIG ($p is gone)"
    sed -i "/^pg$v = /d" "$PGRX_CONFIG"
  fi
done
for v in "${OTHER_MAJORS[@]}"; do
  wrapper=$(bash "$(dirname "$0")/pgchroot.sh" "$v")
  if ! grep -qs "^pg$v = \"$wrapper\"" "$PGRX_CONFIG"; then
    # pgrx builds for a major only when its config names that major's pg_config.
    sed -i "/^pg$v = /d" "$PGRX_CONFIG"
    echo "pg$v = \"$wrapper\"" >> "$PGRX_CONFIG"
  fi
  log "ok: PostgreSQL $v ($("$wrapper" --version)) with TimescaleDB $(grep default_version "$("$wrapper" --sharedir)/extension/timescaledb.control" | cut -d"'" -f2), in a chroot"
done

