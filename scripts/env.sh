# Sourced by the scripts: one warm target dir outside the clone, shared by `serve`, `test` and CI,
# because RocksDB's C++ build costs ~25 minutes on 2 cores.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scimlog-target}"
