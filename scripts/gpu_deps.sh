#!/usr/bin/env bash
# Copies the Debian build dependencies that a GPU machine's image lacks (Catch2, nlohmann-json,
# CLI11, yaml-cpp, Google Benchmark: headers, CMake package files and shared libraries) into
# .gpu_deps/usr, keeping Debian's layout so their CMake files find them there. Run it on a Debian 12
# machine where scripts/bootstrap.sh has installed them; scripts/gpu_check.sh uses the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-.gpu_deps}
rm -rf "$target"
for package in catch2 nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libyaml-cpp0.7 libbenchmark-dev libbenchmark1debian; do
  dpkg -L "$package" | while read -r path; do
    [[ -f $path ]] || continue
    case $path in /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*) continue ;; esac
    mkdir -p "$target$(dirname "$path")"
    cp -L "$path" "$target$path"
  done
done
du -sh "$target"
