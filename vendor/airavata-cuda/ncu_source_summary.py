#!/usr/bin/env python3
"""Where a kernel's time goes, from ncu's source page exported as CSV (`ncu --import R --page source --csv
--print-source sass`): stall samples and executed instructions by opcode, the instructions with the most stall
samples (with their stall-reason columns), and those with excess shared-memory wavefronts (bank conflicts).
Columns are found by name fragments, so a different ncu version's extra or missing columns do not break it."""
import collections
import csv
import re
import sys


def num(v):
    try:
        return float(v.replace(",", ""))
    except (ValueError, AttributeError):
        return 0.0


def main(path):
    rows = [r for r in csv.reader(open(path, newline="", errors="replace"))]
    hi = next((i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r)), None)
    if hi is None:
        print("no header with a 'Source' column: not a source-page CSV?")
        print("".join(",".join(r)[:200] + "\n" for r in rows[:5]))
        return 1
    hdr = [c.strip() for c in rows[hi]]
    data = [r for r in rows[hi + 1:] if len(r) == len(hdr)]
    col = {h: i for i, h in enumerate(hdr)}

    def find(*frags):
        for h in hdr:
            if all(f.lower() in h.lower() for f in frags):
                return h
        return None

    src, addr = "Source", find("Address")
    samp = find("Warp Stall Sampling", "All") or find("stall", "sampl")
    execd = find("Instructions Executed") or find("inst_executed")
    excess = find("Wavefronts Shared Excessive") or find("shared", "excess")
    stall_cols = [h for h in hdr if h.lower().startswith("stall") or "stall_" in h.lower()]
    print(f"{len(data)} instructions; columns used: samples={samp!r} executed={execd!r} excess={excess!r}; "
          f"{len(stall_cols)} stall-reason columns")
    op = lambda r: re.sub(r"^@!?U?P\w+\s+", "", r[col[src]].strip()).split(" ")[0].split(".")[0]
    tot_s = sum(num(r[col[samp]]) for r in data) if samp else 0
    by_op = collections.defaultdict(lambda: [0.0, 0.0])
    for r in data:
        by_op[op(r)][0] += num(r[col[samp]]) if samp else 0
        by_op[op(r)][1] += num(r[col[execd]]) if execd else 0
    print(f"\nstall samples by opcode (total {tot_s:.0f}), with executed warp instructions:")
    for k, (s, e) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {k:10s} {s:9.0f} {100 * s / max(tot_s, 1):5.1f} %   executed {e:12.0f}")
    if stall_cols:
        tot = {h: sum(num(r[col[h]]) for r in data) for h in stall_cols}
        print("\nstall reasons (sum over instructions):")
        for h, v in sorted(tot.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {h:45s} {v:10.0f}")
    if samp:
        print("\ntop 30 instructions by stall samples:")
        for r in sorted(data, key=lambda r: -num(r[col[samp]]))[:30]:
            reasons = sorted(((num(r[col[h]]), h) for h in stall_cols), reverse=True)[:3]
            rs = ", ".join(f"{h}={v:.0f}" for v, h in reasons if v > 0)
            print(f"  {r[col[addr]] if addr else '':>8s} {num(r[col[samp]]):7.0f}  {r[col[src]].strip()[:60]:60s} {rs}")
    if excess:
        tot_x = sum(num(r[col[excess]]) for r in data)
        print(f"\nexcess shared wavefronts: {tot_x:.0f}; top 15 instructions:")
        for r in sorted(data, key=lambda r: -num(r[col[excess]]))[:15]:
            if num(r[col[excess]]) <= 0:
                break
            print(f"  {r[col[addr]] if addr else '':>8s} {num(r[col[excess]]):9.0f}  {r[col[src]].strip()[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
