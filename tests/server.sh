#!/usr/bin/env bash
# The shared model server (issue #19) as a class uses it, on the demo model on the CPU (CI, after
# tests/test.sh, which built the binary): `moe-lens serve` on a socket in a 0700 folder; a trace
# through `--server` equal to a local one (the JSON export, every float); a resumable scan through
# the server whose counts equal a local scan's; `moe-lens loadtest` of 8 simulated students for 20 s
# that fails on any error; and, when run as root, a second user (nobody) refused by the socket's
# 0600 mode with the message that says what to do. About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
CLIENTS=${SERVER_CLIENTS:-8}
DURATION=${SERVER_DURATION:-20}

dir=$(mktemp -d)
chmod 700 "$dir"
cargo build -p moe-lens-cli --locked
# a copy of our binary (a target folder shared with other checkouts may get theirs next)
cp "$target/debug/moe-lens" "$dir/moe-lens"
bin=$dir/moe-lens
sock=$dir/class.sock
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin" serve --model demo --device cpu --socket "$sock" >"$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 240); do
  [ -S "$sock" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/serve.log"; echo "server.sh: the server did not start" >&2; exit 1; }
  sleep 0.25
done
[ -S "$sock" ] || { cat "$dir/serve.log"; echo "server.sh: no socket after 60 s" >&2; exit 1; }
mode=$(stat -c %a "$sock")
[ "$mode" = 600 ] || { echo "server.sh: the socket's mode is $mode, not 600" >&2; exit 1; }
echo "server.sh: $(head -2 "$dir/serve.log" | tail -1)"

# the same trace, every number, through the server and locally
text="The quick brown fox. 저는 보통 여섯 시에 일어나요. 今日はいい天気ですね。"
"$bin" trace --server "$sock" --text "$text" --format json >"$dir/remote.json"
"$bin" trace --model demo --device cpu --text "$text" --format json >"$dir/local.json"
cmp "$dir/remote.json" "$dir/local.json" || { echo "server.sh: the server's trace differs from a local one" >&2; exit 1; }
echo "server.sh: trace through the server = local trace (byte for byte, $(wc -c <"$dir/local.json") bytes of JSON)"

# a scan through the server, counted as a local scan counts
"$bin" scan --server "$sock" --corpus builtin --out "$dir/scan-remote" --batch 8 2>/dev/null
"$bin" scan --model demo --device cpu --corpus builtin --out "$dir/scan-local" --batch 8 2>/dev/null
python3 - "$dir/scan-remote/counts.json" "$dir/scan-local/counts.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = [k for k in a if k not in ("model", "run", "dtype")]
diff = [k for k in keys if a.get(k) != b.get(k)]
if diff:
    sys.exit(f"server.sh: the scan through the server differs from a local scan in {diff}")
print(f"server.sh: scan through the server = local scan ({', '.join(keys)})")
EOF

# a class's load: every request must succeed
"$bin" loadtest --server "$sock" --clients "$CLIENTS" --duration "$DURATION" --think-ms 300 --json "$dir/loadtest.json"

# a user the socket is not for is refused, with what to do (only root can act as another user here)
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then
  pub=$(mktemp -d)
  cp "$bin" "$pub/moe-lens"
  chmod 755 "$pub" "$pub/moe-lens"
  chmod 711 "$dir" # nobody may reach the socket; its own mode (0600) must refuse
  if out=$(runuser -u nobody -- "$pub/moe-lens" trace --server "$sock" --text hi 2>&1); then
    echo "server.sh: nobody could use a 0600 socket: $out" >&2
    exit 1
  fi
  chmod 700 "$dir"
  rm -rf "$pub"
  case "$out" in
    *"may not be opened by you"*"ask your instructor"*) echo "server.sh: another user is refused: ${out:0:160}…" ;;
    *) echo "server.sh: unexpected refusal message: $out" >&2; exit 1 ;;
  esac
fi
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=
echo "server.sh: ok"
