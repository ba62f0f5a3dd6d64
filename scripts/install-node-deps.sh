#!/usr/bin/env bash
# Installs the Node packages of the server tests (tests/server: the official `openai` client,
# pinned by package-lock.json) with `npm ci`. Idempotent: skips when node_modules was installed
# from the current lock file. Without node/npm or the registry the server's client tests are
# skipped, so this only warns -- unless CI=true, where it fails.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/server" && pwd)"
STAMP="$DIR/node_modules/.mixtral-lock-sha256"

warn_or_fail() {
  if [ "${CI:-}" = "true" ]; then echo "install-node-deps: $1 (required when CI=true)" >&2; exit 1; fi
  echo "install-node-deps: $1; the OpenAI client tests will be skipped" >&2
  exit 0
}

command -v node >/dev/null 2>&1 || warn_or_fail "node is not installed"
command -v npm >/dev/null 2>&1 || warn_or_fail "npm is not installed"

want="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -d "$DIR/node_modules/openai" ]; then
  echo "install-node-deps: node_modules is current"
  exit 0
fi
echo "install-node-deps: npm ci in $DIR"
if ! (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error); then
  warn_or_fail "npm ci failed (no registry?)"
fi
echo "$want" > "$STAMP"
