#!/usr/bin/env python3
"""Where one thread of a `perf record --call-graph dwarf` spent its samples.

Usage:
    perf record -p PID -F 499 --call-graph dwarf,16384 -o perf.data -- sleep 14
    perf script -i perf.data --comms files-sensor > thread.txt
    scripts/profile/perf_by_caller.py thread.txt

Prints the number of samples, the share in the kernel, the system calls (by the first user-space
frame under the kernel's frames) with the samples in each, and the leaf functions most sampled.
Used for the burst profiles in BENCHMARKS.md.
"""
import collections
import re
import sys


def stacks(path):
    current = None
    for line in open(path):
        if not line.strip():
            if current:
                yield current
            current = None
        elif not line.startswith("\t"):
            current = []
        elif current is not None:
            match = re.match(r"\s*([0-9a-f]+)\s+(.*?)\+0x[0-9a-f]+\s", line) or re.match(
                r"\s*([0-9a-f]+)\s+(\S+)", line
            )
            if match:
                current.append((match.group(1).startswith("ffffffff"), match.group(2)))
    if current:
        yield current


def main():
    samples = [s for s in stacks(sys.argv[1]) if s]
    kernel = [s for s in samples if s[0][0]]
    calls = collections.Counter(
        next((name for in_kernel, name in s if not in_kernel), "?") for s in kernel
    )
    leaves = collections.Counter(s[0][1] for s in samples)
    total = len(samples)
    print(f"{total} samples, {len(kernel)} in the kernel ({100 * len(kernel) / max(total, 1):.0f}%)")
    print("system calls, by the user-space function that made them:")
    for name, count in calls.most_common(12):
        print(f"  {count:5d} ({100 * count / total:4.1f}%) {name}")
    print("leaf functions:")
    for name, count in leaves.most_common(15):
        print(f"  {count:5d} ({100 * count / total:4.1f}%) {name}")


if __name__ == "__main__":
    main()
