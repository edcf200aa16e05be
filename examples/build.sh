#!/usr/bin/env bash
# Builds the C guest modules:
#   examples/src/*.c  -> examples/build/<name>.wasm      (example transforms)
#   tests/guests/*.c  -> tests/guests/build/<name>.wasm  (hostile-module corpus)
# and generates tests/guests/build/invalid_bytes.wasm (a corrupt module; generated so
# that no binary is committed). WAT guests are not touched: the Rust side compiles them.
#
# With --bench it also builds the cold-start benchmark's large module
#   examples/bench/hashbank.c -> examples/build/hashbank.wasm
# (about a minute of clang, so only when asked; the benchmark asks).
#
# Idempotent and runnable from any directory. A .wasm newer than its .c is left alone.
# Prints one line per file it (re)builds.
set -euo pipefail

bench=0
for arg in "$@"; do
    case "$arg" in
    --bench) bench=1 ;;
    *)
        echo "usage: examples/build.sh [--bench]" >&2
        exit 2
        ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLANG="${CLANG:-clang}"
# --strip-debug drops the DWARF that the distribution's wasi-libc carries (most of each
# module's size) but keeps the name section, so traps still show function names.
CFLAGS=(--target=wasm32-wasi -O2 -Wall -Wextra "-Wl,--strip-debug")

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "examples/build.sh: '$CLANG' not found; run scripts/setup first" >&2
    exit 1
fi

# compile SRC OUT: compiles through a temporary file so an interrupted or failed
# compile never leaves a .wasm that looks up to date.
compile() {
    local src="$1" out="$2"
    if [[ -f "$out" && "$out" -nt "$src" ]]; then
        return 0
    fi
    local tmp="$out.tmp.$$"
    if ! "$CLANG" "${CFLAGS[@]}" -o "$tmp" "$src"; then
        rm -f "$tmp"
        echo "examples/build.sh: failed to compile ${src#"$root"/}" >&2
        echo "  (needs clang with the wasm32-wasi target and wasi-libc; run scripts/setup first)" >&2
        exit 1
    fi
    mv -f "$tmp" "$out"
    echo "built ${out#"$root"/}"
}

# build_dir SRCDIR OUTDIR
build_dir() {
    local srcdir="$1" outdir="$2" src name
    mkdir -p "$outdir"
    shopt -s nullglob
    for src in "$srcdir"/*.c; do
        name="$(basename "$src" .c)"
        compile "$src" "$outdir/$name.wasm"
    done
    shopt -u nullglob
}

build_dir "$root/examples/src" "$root/examples/build"
build_dir "$root/tests/guests" "$root/tests/guests/build"
if [[ "$bench" == 1 ]]; then
    compile "$root/examples/bench/hashbank.c" "$root/examples/build/hashbank.wasm"
fi

# invalid_bytes.wasm: the "\0asm" magic, a bogus version (2) and junk: 16 bytes that a
# loader must reject as an invalid module rather than as "not wasm at all".
invalid="$root/tests/guests/build/invalid_bytes.wasm"
if [[ ! -f "$invalid" || "$(wc -c <"$invalid")" -ne 16 ]]; then
    printf '\0asm\x02\x00\x00\x00garbage!' >"$invalid.tmp.$$"
    mv -f "$invalid.tmp.$$" "$invalid"
    echo "built ${invalid#"$root"/}"
fi
