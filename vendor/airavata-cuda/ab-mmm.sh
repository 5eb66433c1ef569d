#!/usr/bin/env bash
# A/B of the many-column kernel on one card: the harness built from an older commit's files (BASE, default
# ./ab-base, git-ignored: make it here with `bash ab-mmm.sh --prepare <commit>`, then carry it to the device) and
# from this tree, timed in turns (base, new, base, new; --time-only, back-to-back launches). MMM_ONLY narrows the
# variants (default .S2.Za: every tile at 2 stages with the split heuristic; both builds must know the name).
# Prints, per shape, column count and variant, the median of each side and new / base. Results in OUT.
set -uo pipefail
cd "$(dirname "$0")"
FILES="mmm_iq4xs.cu mmm_iq4xs.cuh mmv_iq4xs.cuh harness_util.cuh"
if [ "${1:-}" = --prepare ]; then
  c=${2:?usage: ab-mmm.sh --prepare COMMIT}
  rm -rf ab-base && mkdir ab-base
  for f in $FILES; do git show "$c:vendor/airavata-cuda/$f" > "ab-base/$f" || exit 1; done
  git rev-parse "$c" > ab-base/COMMIT
  echo "ab-base/ holds $FILES at $(cat ab-base/COMMIT)"
  exit 0
fi
BASE=${BASE:-$PWD/ab-base}
OUT=${OUT:-$PWD/out-ab-mmm}
ONLY=${MMM_ONLY:-.S2.Za}
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a"}
mkdir -p "$OUT" build
[ -f "$BASE/mmm_iq4xs.cu" ] || { echo "no base harness in $BASE (bash ab-mmm.sh --prepare COMMIT)"; exit 2; }
build() {  # $1: source directory, $2: binary
  nvcc -O3 -std=c++17 $ARCHS -Xptxas -v -Xcompiler -static-libstdc++ -Xcompiler -static-libgcc \
    "$1/mmm_iq4xs.cu" -o "$2" > "$2.ptxas.log" 2>&1
}
build "$BASE" build/mmm_base & pb=$!
build "$PWD" build/mmm_new & pn=$!
wait $pb || { echo "base build failed"; tail -20 build/mmm_base.ptxas.log; exit 1; }
wait $pn || { echo "new build failed"; tail -20 build/mmm_new.ptxas.log; exit 1; }
cp build/mmm_base.ptxas.log "$OUT/ptxas-base.log"; cp build/mmm_new.ptxas.log "$OUT/ptxas-new.log"
cat "$BASE/COMMIT" > "$OUT/base-commit.txt" 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
for round in 1 2; do
  for side in base new; do
    MMM_ONLY=$ONLY timeout 240 build/mmm_$side --time-only > "$OUT/$side-$round.txt" 2>&1
    echo "rc=$?" >> "$OUT/$side-$round.txt"
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/ab.txt"
import re, statistics, sys, os
out = sys.argv[1]
def parse(path):
    t, key = {}, None
    for line in open(path):
        m = re.match(r"\s*(\d+x\d+)\s+\S+\s+(\d+)\s", line)
        if m: key = (m.group(1), int(m.group(2)))
        elif line.strip().startswith("all:") and key:
            for name, us in re.findall(r"(\S+?)=([\d.]+)", line):
                t[key + (name,)] = float(us)
    return t
runs = {s: [parse(os.path.join(out, f"{s}-{r}.txt")) for r in (1, 2)] for s in ("base", "new")}
keys = sorted(set(runs["base"][0]) & set(runs["new"][0]))
print(f"{'shape':10s} {'N':>4s} {'variant':24s} {'base us':>8s} {'new us':>8s} {'new/base':>8s}")
ratios = []
for k in keys:
    b = statistics.median([r[k] for r in runs["base"] if k in r]); n = statistics.median([r[k] for r in runs["new"] if k in r])
    ratios.append(n / b)
    print(f"{k[0]:10s} {k[1]:4d} {k[2]:24s} {b:8.1f} {n:8.1f} {n / b:8.3f}")
if ratios:
    print(f"\n{len(ratios)} cases: new/base median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
PY
