#!/usr/bin/env bash
# Clean release build of the README's example (readme_example.rs) against this checkout,
# with lightjobs' default features and with none: wall time, stripped binary size and
# crates compiled. Builds in a temporary crate; takes a few minutes on two cores.
#   bash benches/features/measure.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d /tmp/lightjobs-features.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cp "$repo/benches/features/readme_example.rs" "$work/src/main.rs"
printf 'features\tclean release build\tbinary\tcrates\n'
for mode in default none; do
  if [ "$mode" = default ]; then
    dep="lightjobs = { path = \"$repo\" }"
  else
    dep="lightjobs = { path = \"$repo\", default-features = false }"
  fi
  cat > "$work/Cargo.toml" <<TOML
[package]
name = "readme-example"
version = "0.1.0"
edition = "2021"

[dependencies]
$dep
actix-web = "4"
serde = { version = "1", features = ["derive"] }

[profile.release]
strip = true
TOML
  cp "$repo/Cargo.lock" "$work/Cargo.lock"
  rm -rf "$work/target"
  start=$(date +%s)
  (cd "$work" && cargo build --release --quiet)
  end=$(date +%s)
  size=$(stat -c %s "$work/target/release/readme-example")
  crates=$(cd "$work" && cargo tree -e normal --prefix none | sort -u | wc -l)
  printf '%s\t%s s\t%s bytes\t%s\n' "$mode" "$((end - start))" "$size" "$crates"
done
