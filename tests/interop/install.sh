#!/usr/bin/env bash
# Install the pinned interop peers (package-lock.json) with `npm ci` into a cache directory,
# and link it as tests/interop/node_modules, where the peer programs resolve their imports.
# Without node/npm it does nothing: the interop tests then skip, saying so.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm not found: interop peers not installed (tests/interop will skip)"
  exit 0
fi
cache="${MLS_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mls-keystore/interop-npm}"
mkdir -p "$cache"
cp "$here/package.json" "$here/package-lock.json" "$cache/"
# A registry hiccup should not fail CI: up to three attempts, then fail loudly.
for attempt in 1 2 3; do
  if (cd "$cache" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error); then
    break
  fi
  if [ "$attempt" -eq 3 ]; then
    echo "npm ci failed three times: the interop peers are not installed" >&2
    exit 1
  fi
  sleep 5
done
ln -sfn "$cache/node_modules" "$here/node_modules"
echo "interop peers installed in $cache/node_modules"
