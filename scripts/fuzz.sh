#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ for N minutes each.
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]
#
# Defaults: 5 minutes, every target (ws_json ws_msgpack http_path
# wal_record txn_decode). Each run starts from the committed corpus,
# fuzz/corpus/<target>/, and keeps what it finds in fuzz/work/<target>/
# (not committed); a crash is written to fuzz/artifacts/<target>/. Once
# fixed, copy the crashing input into fuzz/corpus/<target>/: `cargo test
# -p tarn-verify` runs every committed corpus file, so it stays fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(ws_json ws_msgpack http_path wal_record txn_decode)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# libFuzzer's instrumentation uses nightly-only compiler flags. This
# machine has one stable toolchain; RUSTC_BOOTSTRAP lets it accept them.
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi
for t in "${targets[@]}"; do
  echo "== fuzzing $t for $minutes min"
  mkdir -p "fuzz/work/$t"
  cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time=$((minutes * 60)) -rss_limit_mb=2048 -timeout=10
done
