#!/usr/bin/env python3
"""Loops of each kernel in `cuobjdump -sass` output (a backward branch = one loop), with their instruction count
and, for each kernel's largest loop, an opcode histogram: the offline metric for a kernel's main loop (SASS
instructions a warp issues per iteration). Usage: cuobjdump -sass X.cubin | python3 sass_loops.py [-]"""
import collections
import re
import sys


def main(lines):
    funcs, name = collections.OrderedDict(), None
    for line in lines:
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2).strip()))
    for name, ins in funcs.items():
        loops = []
        for a, t in ins:
            m = re.search(r"\bBRA (?:!?U?P\d, )?0x([0-9a-f]+)", t)
            if m and int(m.group(1), 16) < a:
                lo = int(m.group(1), 16)
                loops.append((lo, a, sum(1 for b, _ in ins if lo <= b <= a)))
        print(f"{name}: {len(ins)} instructions, {len(loops)} loops")
        for lo, hi, n in sorted(loops):
            print(f"  loop {lo:#06x}..{hi:#06x}: {n} instructions")
        if loops:
            lo, hi, n = max(loops, key=lambda l: l[2])
            c = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for b, t in ins if lo <= b <= hi)
            print("  largest loop: " + ", ".join(f"{k} {v}" for k, v in c.most_common()))


if __name__ == "__main__":
    try:
        main(open(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-" else sys.stdin)
    except BrokenPipeError:  # output cut short by head & co.
        sys.exit(0)
