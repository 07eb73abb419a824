#!/usr/bin/env bash
# Installs the Debian packages alloy needs, only those missing. Works as root or through sudo;
# prints nothing when everything is already installed.
#
#   scripts/bootstrap.sh            everything: build, tests, tools, examples, LibTorch, data tools
#   scripts/bootstrap.sh --print    list the packages and whether each is installed
set -euo pipefail

packages=(
  cmake g++ make ninja-build pkg-config
  catch2 nlohmann-json3-dev libcli11-dev libbenchmark-dev libyaml-cpp-dev libfmt-dev
  libeigen3-dev xtensor-dev libstb-dev
  # LibTorch on CPU. Without OpenBLAS, Debian's LibTorch falls back to the reference BLAS and
  # trains about ten times slower.
  libtorch-dev libopenblas0-pthread
  # Data-parallel training: the headers of Gloo, which LibTorch's c10d process group includes.
  libgloo-dev
  # References for tests and data preparation (called as /usr/bin/python3).
  python3 python3-numpy python3-torch python3-sklearn python3-regex
  gnuplot-nox npm
  # clang for the fuzz targets (libFuzzer) and the ThreadSanitizer build, with LLVM's OpenMP.
  clang libclang-rt-14-dev libomp-dev
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if [[ "${1:-}" == "--print" ]]; then
  for p in "${packages[@]}"; do
    if installed "$p"; then echo "installed  $p"; else echo "missing    $p"; fi
  done
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  # npm may come from outside Debian (nodesource, nvm): any working npm will do.
  [[ "$p" == npm ]] && command -v npm >/dev/null 2>&1 && continue
  installed "$p" || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "bootstrap: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

echo "bootstrap: installing ${#missing[@]} Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" apt-get update -q >"$log" 2>&1 ||
   ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "bootstrap: apt-get failed (full log above)" >&2
  exit 1
fi
echo "bootstrap: done"
