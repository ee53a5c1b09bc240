#!/usr/bin/env python3
"""Which pages of a running process's executable are resident, by the crate whose code fills them.

Usage (as root, while the agent runs):
    scripts/profile/text_resident.py PID target/release/bannin-agent

Reads /proc/PID/maps and /proc/PID/pagemap (bit 63: the page is mapped) for every mapping of the
executable, and names each executable page after the crate with most bytes of code in it (symbols
from `nm -S -C`; C symbols, such as SQLite's, count as "C"). Prints the pages mapped in all, then
KiB resident of KiB mapped per crate. Used for BENCHMARKS.md, "A smaller executable".
"""
import bisect
import collections
import re
import struct
import subprocess
import sys


def crate_of(name):
    plain = name.lstrip("<&*(").replace("dyn ", "").replace("mut ", "")
    if "::" not in name:
        return "C"
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)", plain)
    return match.group(1) if match else "?"


def main():
    pid, exe = int(sys.argv[1]), sys.argv[2]
    nm = subprocess.run(["nm", "-S", "-C", exe], capture_output=True, text=True, check=True).stdout
    symbols = []
    for line in nm.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] and parts[2] in ("t", "T", "w", "W"):
            symbols.append((int(parts[0], 16), int(parts[1], 16), crate_of(parts[3])))
    symbols.sort()
    starts = [s[0] for s in symbols]
    headers = subprocess.run(["readelf", "-lW", exe], capture_output=True, text=True, check=True).stdout
    loads = []
    for line in headers.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            loads.append((int(fields[1], 16), int(fields[2], 16), int(fields[5], 16)))
    mapped = collections.Counter()
    resident = collections.Counter()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in open(f"/proc/{pid}/maps"):
            fields = line.split()
            if len(fields) < 6 or fields[5] != exe:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            for page in range(low, high, 4096):
                pagemap.seek(page // 4096 * 8)
                present = struct.unpack("<Q", pagemap.read(8))[0] >> 63 & 1
                if "x" not in fields[1]:
                    key = "not code: " + fields[1]
                else:
                    file_offset = page - low + offset
                    vaddr = next((file_offset - o + v for o, v, size in loads if o <= file_offset < o + size), None)
                    owners = collections.Counter()
                    i = max(bisect.bisect_right(starts, vaddr or 0) - 1, 0)
                    while vaddr is not None and i < len(symbols) and symbols[i][0] < vaddr + 4096:
                        start, size, crate = symbols[i]
                        overlap = min(start + size, vaddr + 4096) - max(start, vaddr)
                        if overlap > 0:
                            owners[crate] += overlap
                        i += 1
                    key = owners.most_common(1)[0][0] if owners else "?"
                mapped[key] += 1
                resident[key] += present
    print(f"executable pages resident: {sum(resident.values())} of {sum(mapped.values())}")
    for key, pages in resident.most_common(40):
        print(f"{pages * 4:7d} KiB of {mapped[key] * 4:7d} KiB  {key}")


if __name__ == "__main__":
    main()
