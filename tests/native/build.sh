#!/usr/bin/env bash
# Builds the native kernel test program: build.sh OUT [CXX] [ARCH] [--emulate-avx512].
# ARCH is x86 or arm; per-ISA sources are compiled once per ISA as CMake does.
# --emulate-avx512 builds the avx512 objects with SIMDe's VPDPBUSD/VPDPWSSD
# (native/x86/int_macc.h) instead of -mavx512*, so that path runs on any AVX2 CPU.
set -euo pipefail
out=$1; cxx=${2:-g++}; arch=${3:-x86}; emulate=${4:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
flags=(-O2 -std=c++17 -I"$root/native")
objs=()
compile() {  # name src isa extra-flags...
    local name=$1 src=$2 isa=$3; shift 3
    "$cxx" "${flags[@]}" -DLL_ISA="$isa" "$@" -c "$src" -o "$tmp/$name.o"
    objs+=("$tmp/$name.o")
}
for fam in legacy kquants attention; do
    if [ "$arch" = x86 ]; then
        compile "${fam}_avx2" "$root/native/x86/$fam.cpp" avx2 -mavx2 -mfma -mf16c
        if [ "$emulate" = --emulate-avx512 ]; then
            compile "${fam}_avx512" "$root/native/x86/$fam.cpp" avx512 -mavx2 -mfma -mf16c -DLL_VNNI_EMULATED
        else
            compile "${fam}_avx512" "$root/native/x86/$fam.cpp" avx512 -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
        fi
    else
        compile "${fam}_neon" "$root/native/arm/$fam.cpp" neon
        compile "${fam}_dotprod" "$root/native/arm/$fam.cpp" dotprod -march=armv8.2-a+dotprod
    fi
done
# scalar references: no contraction into FMA, as in CMakeLists.txt
"$cxx" "${flags[@]}" -ffp-contract=off -c "$root/native/scalar/legacy.cpp" -o "$tmp/scalar_legacy.o"
"$cxx" "${flags[@]}" -ffp-contract=off -c "$root/native/scalar/kquants.cpp" -o "$tmp/scalar_kquants.o"
"$cxx" "${flags[@]}" -ffp-contract=off -c "$root/native/scalar/attention.cpp" -o "$tmp/scalar_attention.o"
static=()
[ "$arch" = arm ] && static=(-static)
dispatch_flags=()
[ "$emulate" = --emulate-avx512 ] && dispatch_flags=(-DLL_VNNI_EMULATED)
"$cxx" "${flags[@]}" "${static[@]}" "${dispatch_flags[@]}" "$root/tests/native/kernel_test.cpp" "$root/native/blocks.cpp" "$root/native/dispatch.cpp" \
    "${objs[@]}" "$tmp/scalar_legacy.o" "$tmp/scalar_kquants.o" "$tmp/scalar_attention.o" -o "$out" -lpthread
