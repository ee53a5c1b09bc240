#!/usr/bin/env bash
# Compiles the eBPF sensor's programs into OUT_DIR (default: this directory, where the agent embeds
# them from). The objects are committed so that `cargo build` needs no clang; the test
# `ebpf::objects_match_their_source` runs this script into a temporary directory and requires the
# result to be byte-identical to the committed objects, with Debian 12's clang 14, llvm and
# libbpf-dev (scripts/test installs them). Debug paths are mapped to "." and DWARF is stripped,
# keeping the BTF that CO-RE needs, so the output does not depend on where the repository lives.
set -euo pipefail
src="$(cd "$(dirname "$0")" && pwd)"
out="$(cd "${1:-$src}" && pwd)"
arch_include="/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
cd "$src"
for program in process network reads; do
  clang -target bpf -O2 -g -Wall -Werror -I"$arch_include" -fdebug-prefix-map="$src"=. \
    -c "$program.bpf.c" -o "$out/$program.bpf.o"
  llvm-strip -g "$out/$program.bpf.o"
done
