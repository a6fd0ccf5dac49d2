#!/usr/bin/env bash
# Build a released version of livesync from this repository's git history into a PostgreSQL
# prefix of its own, for the upgrade tests (tests/e2e/tests/upgrade.rs): a server started
# from <prefix>/usr/lib/postgresql/<PG>/bin loads that version's library and SQL scripts,
# and nothing else of livesync, while every other file (TimescaleDB, plpgsql, ...) is the
# system's, by symlink. (PostgreSQL finds its lib and share directories relative to the
# postgres binary, so the binaries are copied, not linked.)
#
# usage: scripts/old-version.sh VERSION [PG]     prints the prefix's bin directory
#
# The released version V is the last commit whose Cargo.toml says version = "V". Idempotent:
# quick once built. Builds share one cargo target directory, so dependencies build once.
set -euo pipefail

V=${1:?usage: scripts/old-version.sh VERSION [PG]}
PG=${2:-15}
SETUP=${LIVESYNC_SETUP_DIR:-/var/tmp/livesync-setup}
ROOT=$SETUP/old/pg$PG/$V
BIN=$ROOT/usr/lib/postgresql/$PG/bin
if [ -f "$ROOT/.done" ]; then
  echo "$BIN"
  exit 0
fi
# One build at a time: they share a cargo target directory, and a package is copied out
# of it after its build.
mkdir -p "$SETUP/old"
exec 9>"$SETUP/old/.lock"
flock 9
if [ -f "$ROOT/.done" ]; then
  echo "$BIN"
  exit 0
fi
PG_CONFIG=/usr/lib/postgresql/$PG/bin/pg_config
[ -x "$PG_CONFIG" ] || { echo "old-version.sh: PostgreSQL $PG is not installed here" >&2; exit 1; }

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
current=$(grep -m1 '^version = ' "$repo/Cargo.toml" | sed 's/^version = "\(.*\)"/\1/')
[ "$V" != "$current" ] || { echo "old-version.sh: $V is the current version" >&2; exit 1; }
# The newest commit that added or removed the line is the one that left version V.
left=$(git -C "$repo" log -1 --format=%H -G "^version = \"${V//./\\.}\"" -- Cargo.toml)
[ -n "$left" ] || { echo "old-version.sh: no version $V in this repository's history" >&2; exit 1; }
commit=$(git -C "$repo" rev-parse "$left^")
grep -q "^version = \"$V\"" <(git -C "$repo" show "$commit:Cargo.toml") ||
  { echo "old-version.sh: $commit is not version $V" >&2; exit 1; }

work=$SETUP/old/src/$V
rm -rf "$work" "$ROOT"
mkdir -p "$work" "$ROOT"
git -C "$repo" archive "$commit" | tar -x -C "$work"
echo "old-version.sh: building livesync $V ($commit) for PostgreSQL $PG" >&2
(cd "$work" && CARGO_TARGET_DIR=$SETUP/old/target cargo pgrx package --debug \
   --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG" --out-dir "$ROOT/pkg" >&2)

lib=/usr/lib/postgresql/$PG/lib
share=/usr/share/postgresql/$PG
mkdir -p "$BIN" "$ROOT$lib" "$ROOT$share/extension"
for p in postgres pg_ctl initdb; do cp "/usr/lib/postgresql/$PG/bin/$p" "$BIN/"; done
for f in "$lib"/*; do
  case $(basename "$f") in livesync*) ;; *) ln -s "$f" "$ROOT$lib/" ;; esac
done
for f in "$share"/*; do
  case $(basename "$f") in extension) ;; *) ln -s "$f" "$ROOT$share/" ;; esac
done
for f in "$share"/extension/*; do
  case $(basename "$f") in livesync*) ;; *) ln -s "$f" "$ROOT$share/extension/" ;; esac
done
cp "$ROOT/pkg$lib"/livesync.so "$ROOT$lib/"
cp "$ROOT/pkg$share"/extension/livesync* "$ROOT$share/extension/"
chmod -R a+rX "$SETUP/old"
touch "$ROOT/.done"
echo "$BIN"
