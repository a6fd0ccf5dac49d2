#!/usr/bin/env bash
# PostgreSQL 17 or 18 with TimescaleDB, for building and testing livesync on this Debian
# bookworm machine, which packages only PostgreSQL 15.
#
#   scripts/pgchroot.sh VERSION      # 17 or 18; prints the pg_config wrapper's path
#
# Debian trixie ships postgresql-17 and postgresql-17-timescaledb, Debian forky
# postgresql-18 and postgresql-18-timescaledb. Their binaries need a newer glibc than
# bookworm's, so they live in a `debootstrap --variant=minbase` chroot under the setup state
# directory. Idempotent: a chroot that is complete (a stamp file) is reused as it is.
#
# Next to the chroot this writes `pg_config`, a wrapper that runs the chroot's pg_config and
# prefixes the paths it prints with the chroot's directory. Built on the host against it,
# `cargo pgrx install --pg-config <wrapper>` installs livesync into the chroot, where the
# chroot's server loads it (the extension needs no newer glibc than bookworm's).
#
# The servers themselves are started by the tests' harness (`chroot --userspec=postgres`),
# and by scripts/demo.sh: see tests/e2e/src/lib.rs, `Install`.
set -euo pipefail

VERSION=${1:?usage: scripts/pgchroot.sh 17|18}
STATE_DIR=${LIVESYNC_SETUP_DIR:-/var/tmp/livesync-setup}
MIRROR=${LIVESYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}

case "$VERSION" in
  17) SUITE=trixie; SCRIPT=/usr/share/debootstrap/scripts/trixie ;;
  # bookworm's debootstrap has no forky script; forky is a testing suite like sid.
  18) SUITE=forky;  SCRIPT=/usr/share/debootstrap/scripts/sid ;;
  *) echo "scripts/pgchroot.sh: PostgreSQL $VERSION is not supported here (17 or 18)" >&2; exit 2 ;;
esac

ROOT="$STATE_DIR/pg$VERSION/root"
WRAPPER="$STATE_DIR/pg$VERSION/pg_config"
STAMP="$STATE_DIR/pg$VERSION/complete"

log() { printf '\033[1m[pg%s]\033[0m %s\n' "$VERSION" "$*" >&2; }

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

if [ ! -f "$STAMP" ]; then
  log "debootstrap $SUITE with PostgreSQL $VERSION and TimescaleDB into $ROOT (about two minutes)"
  rm -rf "$ROOT"
  mkdir -p "$ROOT/etc/postgresql-common"
  # The packages' maintainer scripts must not create or start a cluster of their own.
  echo "create_main_cluster = false" > "$ROOT/etc/postgresql-common/createcluster.conf"
  debootstrap --variant=minbase \
    --include="postgresql-$VERSION,postgresql-server-dev-$VERSION,postgresql-$VERSION-timescaledb,locales" \
    "$SUITE" "$ROOT" "$MIRROR" "$SCRIPT" >"$STATE_DIR/pg$VERSION/debootstrap.log" 2>&1 \
    || { tail -30 "$STATE_DIR/pg$VERSION/debootstrap.log" >&2; exit 1; }
  # POSIX shared memory (dynamic_shared_memory_type = posix, the default) needs /dev/shm.
  mkdir -p "$ROOT/dev/shm" && chmod 1777 "$ROOT/dev/shm"
  touch "$STAMP"
fi

# The wrapper: pg_config of the chroot, with every absolute path it prints prefixed by ROOT
# (pgrx reads --includedir-server, --pkglibdir, --sharedir, --bindir, ...).
cat > "$WRAPPER.new" <<EOF
#!/bin/sh
# pg_config of PostgreSQL $VERSION in the chroot $ROOT, paths as seen from the host.
# Written by scripts/pgchroot.sh.
chroot "$ROOT" /usr/lib/postgresql/$VERSION/bin/pg_config "\$@" |
  sed -E 's#(^| |=|-I|-L)/#\\1$ROOT/#g'
EOF
chmod +x "$WRAPPER.new"
mv "$WRAPPER.new" "$WRAPPER"
echo "$WRAPPER"
