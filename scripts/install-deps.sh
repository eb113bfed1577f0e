#!/usr/bin/env bash
# Installs what building and testing tc-agent needs, and nothing that is
# already there: quick and idempotent, safe to run before every build.
#
# - Debian packages: rustc-web + rust-web-src (a rustc whose std sources
#   allow -Z build-std=core for the bpfel target), LLVM 22 for bpf-linker,
#   iproute2/iperf3/ethtool for the namespace tests and the demo,
#   nginx-light and wrk for the connection-limit tests (web server and
#   load generator in the namespaces), prometheus for `promtool check
#   metrics` in the metrics test, tmux for the `tc-agent top` test (a real
#   terminal to run the view in).
# - bpf-linker 0.13.0 built against LLVM 22, from crates.io.
set -euo pipefail

packages=(rustc-web rust-web-src llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev
          iproute2 iperf3 ethtool iputils-ping qemu-system-x86 busybox-static cpio xz-utils
          nginx-light wrk prometheus tmux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

if ! bpf-linker --version 2>/dev/null | grep -q "0\.13\.0"; then
  echo "install-deps: building bpf-linker 0.13.0 against LLVM 22 (a few minutes, once)" >&2
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --quiet bpf-linker --version 0.13.0 \
    --no-default-features --features llvm-22
fi
