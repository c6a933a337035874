#!/usr/bin/env bash
# Runs every check a change must pass: formatting, lints, the layering
# rules of ARCHITECTURE.md, and all tests. CI runs exactly this
# (.ci/run). It installs what it needs as the suite comes to need it.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n== %s\n' "$*"; }

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "layering: tarn-core stays pure"
# tarn-core knows nothing about async, networks, JS engines or formats.
for dep in tokio axum hyper rquickjs serde_json object_store; do
  # `cargo tree -i` prints nothing when $dep is not reachable from tarn-core
  # (and fails when no crate of the workspace uses it at all).
  if [ -n "$(cargo tree --locked -q -p tarn-core -e normal -i "$dep" 2>/dev/null)" ]; then
    echo "tarn-core depends on $dep (see: cargo tree -p tarn-core -i $dep); it must stay pure" >&2
    exit 1
  fi
done
echo "ok"

step "test dependencies"
# An S3-compatible server for the archive tests (tarn-store tests/it/s3.rs).
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet "moto[server]"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
command -v moto_server
# The peers of `tarn bench compare` (redis, etcd, NATS, PostgreSQL), for its
# test in crates/tarn/tests/it/bench.rs.
./scripts/bench-deps.sh

step "tests (cargo test)"
cargo test --workspace --locked

step "verify: the runner catches a broken engine (feature broken-engine)"
# A second build of the engine with its read check switched off; the
# tarn-verify runner must report anomalies against it.
cargo test --locked -p tarn-verify --features broken-engine --test broken
