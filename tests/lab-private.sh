#!/usr/bin/env bash
# Private labs on a shared server (kernel-setup/start-lab.sh): starts the lab twice, on a TCP port
# (--background, stopped with the printed `kill PID`) and on a Unix socket (--socket, in the
# foreground, stopped with SIGTERM as Ctrl-C would), and checks each time that
#   - no process's arguments hold the token (/proc/*/cmdline of every process);
#   - the private folder is 0700 and everything in it private: the log, the token file and
#     Jupyter's runtime files 0600, folders 0700, the socket srw------- (jupyter_server binds it,
#     then chmods it to --ServerApp.sock_mode=0600); the log does not contain the token;
#   - the printed ssh line and URL match the mode, and the token file holds the URL's token;
#   - the server answers with the token (header, ?token=, the /lab page) and refuses without it or
#     with a wrong one (403); over the socket the lab has no TCP listening socket at all;
#   - as root with setpriv and curl: user nobody cannot connect to the socket, and gets 403 on
#     the port;
#   - after the stop, the server process is gone.
# No Rust needed: it reuses the lab's virtual environment made by kernel-setup/install.sh when it has
# the jupyterlab version kernel-setup/lab-python.sh pins (CI), else LAB_PRIVATE_VENV if set, else it makes a
# throwaway one with that pin (about a minute). A dummy kernel spec 'moe-lens-rust' in a temporary
# JUPYTER_PATH satisfies start-lab.sh's check (no kernel is started); MOE_LENS_HOME and Jupyter's
# config and data folders are temporary too, so your own lab and settings are not touched.
#
#   tests/lab-private.sh            # last line: lab-private: 2 passed, 0 failed
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
umask 022  # a usual umask: start-lab.sh must make its files private by itself

# the pin lives in kernel-setup/lab-python.sh (sourced by install.sh); `|| true` so that a missing pin
# reaches the message below instead of ending the script silently under pipefail
pin=$(grep -o 'jupyterlab==[0-9.]*' kernel-setup/lab-python.sh | head -1 || true)
[ -n "$pin" ] || { echo "lab-private: no jupyterlab==VERSION pin found in kernel-setup/lab-python.sh" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lab-private.XXXXXX")
started=()
cleanup() {
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

has_pin() { [ -x "$1/bin/jupyter-lab" ] && [ "$("$1/bin/python" -c 'from importlib.metadata import version; print("jupyterlab==" + version("jupyterlab"))' 2>/dev/null)" = "$pin" ]; }
lab_venv=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}/lab-venv
if has_pin "$lab_venv"; then
  venv=$lab_venv; echo "lab-private: using install.sh's lab environment $venv"
elif [ -n "${LAB_PRIVATE_VENV:-}" ] && has_pin "$LAB_PRIVATE_VENV"; then
  venv=$LAB_PRIVATE_VENV; echo "lab-private: using LAB_PRIVATE_VENV=$venv"
else
  venv=$tmp/venv
  echo "lab-private: making a throwaway environment with $pin (about a minute)"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin"
fi
"$venv/bin/python" -c 'from importlib.metadata import version as v; print("lab-private: jupyterlab", v("jupyterlab"), "jupyter_server", v("jupyter_server"), "tornado", v("tornado"))'

# A home of its own for start-lab.sh, whose lab-venv is the environment above.
export MOE_LENS_HOME=$tmp/home
mkdir -p "$MOE_LENS_HOME" "$tmp/jupyter-path/kernels/moe-lens-rust"
ln -s "$venv" "$MOE_LENS_HOME/lab-venv"
cat > "$tmp/jupyter-path/kernels/moe-lens-rust/kernel.json" <<'JSON'
{"argv": ["false", "{connection_file}"], "display_name": "dummy for tests/lab-private.sh", "language": "rust"}
JSON
export JUPYTER_PATH=$tmp/jupyter-path JUPYTER_CONFIG_DIR=$tmp/jupyter-config JUPYTER_DATA_DIR=$tmp/jupyter-data
unset JUPYTER_RUNTIME_DIR JUPYTER_TOKEN JUPYTER_TOKEN_FILE
run=$MOE_LENS_HOME/run

# check MODE OUTPUT_FILE: every check of one running lab (the token is read from files, never passed).
check() {
  "$venv/bin/python" - "$1" "$2" "$run" <<'PY'
import http.client, os, re, shutil, socket, stat, subprocess, sys

mode, out_file, run = sys.argv[1:4]
out = open(out_file, encoding="utf-8").read()
failed = 0

def ok(what, cond, detail=""):
    global failed
    print(f"    {'ok  ' if cond else 'FAIL'} {what}{'' if cond or not detail else ': ' + detail}")
    failed += not cond
    return cond

m = re.search(r"http://localhost:(\d+)/lab\?token=([0-9a-f]+)", out)
pm = re.search(r"\(pid (\d+)", out)
if not ok("the URL with its token and the pid are printed", bool(m and pm)):
    sys.exit(1)
lport, token, pid = m.group(1), m.group(2), int(pm.group(1))
ssh = re.search(r"^\s*(ssh -N -L \S+ \S+)$", out, re.M)
ssh = ssh.group(1) if ssh else ""
sock = os.path.join(run, "lab.sock")
if mode == "socket":
    ok("ssh line forwards to the socket, URL on localhost:8888",
       lport == "8888" and ssh.startswith(f"ssh -N -L 8888:{sock} "), ssh)
    name = "lab-socket"
else:
    ok("ssh line forwards the port the URL names", ssh.startswith(f"ssh -N -L {lport}:localhost:{lport} "), ssh)
    name = f"lab-{lport}"
ok("the token is 48 hex digits", len(token) == 48)
tokfile, log = os.path.join(run, name + ".token"), os.path.join(run, name + ".log")
ok("the token file holds the URL's token", os.path.isfile(tokfile) and open(tokfile).read() == token)

# 1. no command line of any process holds the token
seen, leaks = 0, []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue  # gone meanwhile
        seen += 1
        if token.encode() in cmd:
            args = cmd.decode(errors="replace").split("\0")
            leaks.append(f"pid {p} ({args[0]}): " + " ".join(a.replace(token, "<TOKEN>") for a in args if token in a))
ok(f"no command line holds the token ({seen} processes scanned)", seen > 0 and not leaks, "; ".join(leaks))
ok(f"pid {pid} is the lab (its command line was among those scanned)",
   os.path.exists(f"/proc/{pid}/cmdline") and b"jupyter-lab" in open(f"/proc/{pid}/cmdline", "rb").read())

# 2. the private folder and everything in it
listing, bad = [], []
def want(path, perm):
    st = os.lstat(path)
    kind = "socket" if stat.S_ISSOCK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    got = stat.S_IMODE(st.st_mode)
    listing.append(f"{stat.filemode(st.st_mode)} {os.path.relpath(path, run)}")
    if kind == "other" or got != perm or st.st_uid != os.getuid():
        bad.append(f"{os.path.relpath(path, run)} is {kind} {got:04o}, want {perm:04o}")
    return kind
if os.path.isdir(run):
    want(run, 0o700)
else:
    bad.append(f"no private folder {run}")
for root, dirs, files in os.walk(run):
    for d in dirs:
        want(os.path.join(root, d), 0o700)
    for f in files:
        want(os.path.join(root, f), 0o600)
print("    the private folder:\n      " + ("\n      ".join(listing) or "(missing)"))
ok("folder 0700; log, token, runtime files and socket 0600, all yours", not bad, "; ".join(bad))
ok("log and token file present", os.path.isfile(log) and os.path.isfile(tokfile))
ok("Jupyter's server-info file is in the private runtime folder",
   os.path.isfile(os.path.join(run, "jupyter", f"jpserver-{pid}.json")))
ok("the log does not contain the token",
   os.path.isfile(log) and token not in open(log, encoding="utf-8", errors="replace").read())
if mode == "socket":
    ok("the socket is in the private folder", os.path.exists(sock) and stat.S_ISSOCK(os.lstat(sock).st_mode))

# 3. the server: the token opens it, nothing else does
class UnixHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(sock)

def get(path, headers={}):
    c = UnixHTTPConnection("localhost", timeout=10) if mode == "socket" else http.client.HTTPConnection("127.0.0.1", int(lport), timeout=10)
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    r.read()
    return r.status

codes = {
    "token header": get("/api/status", {"Authorization": "token " + token}),
    "?token=": get("/api/status?token=" + token),
    "/lab?token=": get("/lab?token=" + token),
    "no token": get("/api/status"),
    "wrong token": get("/api/status?token=" + "0" * 48),
}
ok(f"answers with the token, refuses without it {codes}",
   codes["token header"] == 200 and codes["?token="] == 200 and codes["/lab?token="] == 200
   and codes["no token"] == 403 and codes["wrong token"] == 403)

# 4. the socket lab listens on no TCP port
if mode == "socket":
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        listening += [r.split()[1] for r in rows if r.split()[3] == "0A" and r.split()[9] in inodes]
    ok("no TCP listening socket in the socket lab", bool(inodes) and not listening, ", ".join(listening))

# 5. another user (only when this runs as root with setpriv and curl)
if os.geteuid() == 0 and shutil.which("setpriv") and shutil.which("curl"):
    other = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    if mode == "socket":
        r = subprocess.run(other + ["--unix-socket", sock, "http://localhost/api/status"], capture_output=True, text=True)
        ok("user nobody cannot connect to the socket", r.returncode != 0 and r.stdout in ("", "000"), f"curl exit {r.returncode}, HTTP {r.stdout}")
    else:
        r = subprocess.run(other + [f"http://127.0.0.1:{lport}/api/status"], capture_output=True, text=True)
        ok("user nobody reaches the port but gets 403 without the token", r.stdout == "403", f"curl exit {r.returncode}, HTTP {r.stdout}")
else:
    print("    skip user nobody's attempt (needs root, setpriv and curl)")
sys.exit(1 if failed else 0)
PY
}

# wait_for FILE PID: until start-lab.sh has printed its banner (0), or ended/timed out (1).
wait_for() {
  for _ in $(seq 180); do
    grep -q '^=\{80\}$' "$1" 2>/dev/null && grep -q '^Stop with Ctrl-C\|^Stop it with' "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

# gone PID: wait until the process has ended (at most 30 s)
gone() {
  for _ in $(seq 60); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  return 1
}

lab_pid() { sed -n 's/.*(pid \([0-9]*\).*/\1/p' "$1" | head -1; }

passed=0; failed=0
result() { # result NAME STATUS
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "lab-private: $1: passed"
  else failed=$((failed + 1)); echo "lab-private: $1: FAILED"; fi
}

# --- 1. TCP port, in the background -------------------------------------------------------------
echo "lab-private: [1] start-lab.sh --background --port 18890"
st=0
if bash kernel-setup/start-lab.sh --background --port 18890 > "$tmp/tcp.out" 2>&1; then
  pid=$(lab_pid "$tmp/tcp.out"); started+=("$pid")
  check tcp "$tmp/tcp.out" || st=1
  stop=$(sed -n 's/^Stop it with: *//p' "$tmp/tcp.out")
  if [ "$stop" = "kill $pid" ]; then kill "$pid"; else echo "    FAIL the printed stop command is '$stop'"; st=1; kill "$pid"; fi
  if gone "$pid"; then echo "    ok   stopped with the printed command"; else echo "    FAIL pid $pid still runs"; st=1; fi
else
  echo "    FAIL start-lab.sh failed:"; tail -20 "$tmp/tcp.out" | sed 's/^/      /'; st=1
fi
result "TCP port (--background)" "$st"

# --- 2. Unix socket, in the foreground ----------------------------------------------------------
echo "lab-private: [2] start-lab.sh --socket (foreground, then SIGTERM as Ctrl-C)"
st=0
bash kernel-setup/start-lab.sh --socket > "$tmp/sock.out" 2>&1 &
script=$!; started+=("$script")
if wait_for "$tmp/sock.out" "$script"; then
  pid=$(lab_pid "$tmp/sock.out"); started+=("$pid")
  check socket "$tmp/sock.out" || st=1
  kill -TERM "$script"
  if gone "$pid" && gone "$script"; then echo "    ok   SIGTERM to start-lab.sh stopped the lab"; else echo "    FAIL the lab still runs"; st=1; fi
  # Jupyter leaves its socket file behind; start-lab.sh removes it (stale ones piled up per Slurm job)
  if [ -e "$MOE_LENS_HOME/run/lab.sock" ]; then echo "    FAIL the socket file stays after the lab stopped"; st=1
  else echo "    ok   the socket file is removed"; fi
else
  echo "    FAIL start-lab.sh --socket did not start the lab:"; tail -20 "$tmp/sock.out" | sed 's/^/      /'; st=1
fi
result "Unix socket (--socket, foreground)" "$st"

echo "lab-private: $passed passed, $failed failed"
[ "$failed" = 0 ]
