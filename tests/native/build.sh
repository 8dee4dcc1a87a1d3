#!/usr/bin/env bash
# Builds the native kernel test program: build.sh OUT [CXX] [ARCH] [--emulate-avx512].
# ARCH is x86 or arm (cross-compiled for AArch64).  The program is the
# kernel_test target of CMakeLists.txt, so its kernels are compiled with the
# extension's flags, which live only there.
# --emulate-avx512 builds the avx512 objects with SIMDe's VPDPBUSD/VPDPWSSD
# (native/x86/int_macc.h) instead of -mavx512*, so that path runs on any AVX2 CPU.
set -euo pipefail
out=$1; cxx=${2:-g++}; arch=${3:-x86}; emulate=${4:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
config=(-DCMAKE_CXX_COMPILER="$cxx" -DLLAMALOCAL_PYTHON_MODULE=OFF -DLLAMALOCAL_KERNEL_TEST=ON)
case $arch in
    x86) ;;
    # linked statically: it runs under qemu-aarch64-static, without an AArch64 libc to load
    arm) config+=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_EXE_LINKER_FLAGS=-static) ;;
    *) echo "build.sh: ARCH is x86 or arm, not $arch" >&2; exit 2 ;;
esac
case $emulate in
    --emulate-avx512) config+=(-DLLAMALOCAL_EMULATE_AVX512=ON) ;;
    '') ;;
    *) echo "build.sh: unknown option $emulate" >&2; exit 2 ;;
esac
# quiet unless a step fails, then its whole log
run() {
    "$@" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
}
run cmake -S "$root" -B "$tmp/build" "${config[@]}"
run cmake --build "$tmp/build" --target kernel_test -j2
cp "$tmp/build/kernel_test" "$out"
