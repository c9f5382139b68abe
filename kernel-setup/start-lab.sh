#!/usr/bin/env bash
# Starts JupyterLab on notebooks/ for use through an SSH tunnel, and prints the two things to do on
# your laptop: the `ssh -N -L …` line and the URL (with its token) to open.
#
#   kernel-setup/start-lab.sh [--port N | --socket [PATH]] [--background]
#
#   --port N         port on this server (default 8888; if it is taken, the next free one is used
#                    and the script says so). Every user of this server can reach a port: the
#                    token is what keeps them out.
#   --socket [PATH]  listen on a Unix socket instead of a port: no other user can connect at all.
#                    Default PATH: $MOE_LENS_HOME/run/lab.sock; a PATH of your own must be in a
#                    folder that only you can write to. The ssh line then forwards to the socket
#                    (OpenSSH 6.7 or later; some servers forbid it: then use a port).
#   --background     keep running after this script ends; the stop command is printed. Default:
#                    run in the foreground until Ctrl-C (use tmux or screen if your SSH session may
#                    drop).
#
# Keeping the lab yours on a shared server: whoever has the token can run code as you. It is a
# fresh random key each time, and it is never on a command line (`ps` shows those to every user):
# JupyterLab reads it from a file (JUPYTER_TOKEN_FILE). That file (lab-PORT.token), the log
# (lab-PORT.log; it does not contain the token) and Jupyter's own runtime files (which hold it too)
# are in $MOE_LENS_HOME/run, a folder only you can enter (mode 0700, files 0600).
# $MOE_LENS_HOME defaults to ~/.local/share/moe-lens.
#
# The notebooks read MOE_LENS_MODEL (see kernel-setup/install.sh's last lines); set it here:
#   MOE_LENS_MODEL=/path/to/checkpoint kernel-setup/start-lab.sh
# MOE_LENS_LOGIN_NODE=HOST (set by slurm-lab.sbatch): this is a compute node reached through HOST;
# the printed ssh line then jumps through it (-J).
set -euo pipefail

user_umask=$(umask)
umask 077  # everything this script creates is private; JupyterLab itself gets your umask back
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
venv=$home/lab-venv
run=$home/run
die() { echo "start-lab.sh: $*" >&2; exit 1; }

port=8888
port_given=0
sock=""
background=0
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?--port needs a number}; port_given=1; shift 2 ;;
    --port=*) port=${1#--port=}; port_given=1; shift ;;
    --socket)
      sock=$run/lab.sock; shift
      if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then sock=$1; shift; fi ;;
    --socket=*) sock=${1#--socket=}; shift ;;
    --background) background=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "start-lab.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case $port in ''|*[!0-9]*) echo "start-lab.sh: --port wants a number, got '$port'" >&2; exit 2 ;; esac
if [ -n "$sock" ] && [ "$port_given" = 1 ]; then
  echo "start-lab.sh: --port and --socket exclude each other: the lab listens on one or the other" >&2
  exit 2
fi

if [ ! -x "$venv/bin/jupyter-lab" ]; then
  die "JupyterLab is not installed in $venv: run kernel-setup/install.sh first"
fi
py=$venv/bin/python
# (The list is read whole first: with `| grep -q`, grep's early exit can make jupyter fail on a
# broken pipe, and pipefail then reported a registered kernel as missing, 1 run in 5 here.)
specs=$("$venv/bin/jupyter" kernelspec list 2>/dev/null || true)
if ! grep -q '^ *moe-lens-rust ' <<< "$specs"; then
  die "the kernel 'moe-lens-rust' is not registered: run kernel-setup/install.sh"
fi

# The private folder: created under umask 077, refused if it is someone else's or a link.
mkdir -p "$run"
if [ -L "$run" ] || [ ! -d "$run" ] || [ ! -O "$run" ]; then
  die "$run must be a folder of your own (it is a link, not a folder, or owned by someone else): move it away and start again"
fi
chmod 700 "$run"
mkdir -p "$run/jupyter"
chmod 700 "$run/jupyter"
# Logs of older versions of this script sat in $home with your umask, each with its lab's token.
for f in "$home"/lab-*.log; do
  if [ -f "$f" ] && [ -O "$f" ] && [ -n "$(find "$f" -perm /077)" ]; then
    chmod 600 "$f" && echo "start-lab.sh: made the old log $f private (it holds an old lab's token)"
  fi
done
# A lab started by an older version of this script shows its token to everyone in `ps`.
if command -v pgrep >/dev/null 2>&1; then
  for p in $(pgrep -u "$(id -u)" -f -- '--IdentityProvider.token=' || true); do
    echo "start-lab.sh: WARNING: your JupyterLab with pid $p has its token on its command line, which every"
    echo "             user of this server can read with 'ps': stop it with  kill $p"
  done
fi

if [ -n "$sock" ]; then
  case $sock in /*) ;; *) sock=$PWD/$sock ;; esac
  sockdir=$(dirname "$sock")
  [ -d "$sockdir" ] || die "--socket $sock: the folder $sockdir does not exist"
  if [ ! -O "$sockdir" ] || [ -n "$(find "$sockdir" -maxdepth 0 -perm /022)" ]; then
    die "--socket $sock: $sockdir must be a folder of your own that no one else can write to
  (it is $(stat -c '%A, owned by %U' "$sockdir")). Use --socket alone (the socket goes to $run),
  or make one:  mkdir -m 700 ~/lab-sock  and use  --socket ~/lab-sock/lab.sock"
  fi
  if [ "${#sock}" -gt 107 ]; then
    die "--socket $sock: the path is ${#sock} characters, Linux allows at most 107 for a socket;
  use a shorter one in a folder of your own, e.g.:  mkdir -m 700 ~/lab-sock  and  --socket ~/lab-sock/lab.sock"
  fi
  name=lab-socket
  [ "$sock" = "$run/lab.sock" ] || name=lab-socket-$(basename "$sock" .sock | tr -c 'A-Za-z0-9._\n-' _)
  # Another lab on this socket? (Jupyter would replace a dead socket file, but not a live one.)
  if [ -S "$sock" ] && "$py" - "$sock" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
PY
  then
    other=$(JUPYTER_RUNTIME_DIR=$run/jupyter "$py" - "$sock" <<'PY' 2>/dev/null || true
import glob, json, os, sys
for f in glob.glob(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "jpserver-*.json")):
    with open(f) as fh:
        info = json.load(fh)
    if info.get("sock") == sys.argv[1]:
        print(info.get("pid", ""))
PY
)
    die "a lab is already listening on $sock${other:+ (pid $other)}.
  Use that one (its token is in $run/$name.token), stop it first${other:+ (kill $other)},
  or give another path: --socket $run/lab2.sock"
  fi
else
  # First free port from the one asked for (on 127.0.0.1, where the lab listens).
  free=$("$py" - "$port" <<'PY'
import socket, sys
p = int(sys.argv[1])
for q in range(p, p + 100):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", q))
    except OSError:
        continue
    finally:
        s.close()
    print(q)
    break
PY
  )
  if [ -z "$free" ]; then die "no free port in $port..$((port + 99))"; fi
  if [ "$free" != "$port" ]; then
    echo "start-lab.sh: port $port is taken (another lab, maybe another user's), using $free instead"
    port=$free
  fi
  name=lab-$port
fi

host=$(hostname -f 2>/dev/null || hostname)
user=${USER:-$(id -un)}
log=$run/$name.log
tokfile=$run/$name.token
# The token: made by Python (printed to this script, never an argument), kept in a 0600 file that
# JupyterLab reads through JUPYTER_TOKEN_FILE. JUPYTER_TOKEN would win over the file: unset it.
token=$("$py" -c 'import secrets; print(secrets.token_hex(24))')
rm -f "$tokfile" "$log"
printf '%s' "$token" > "$tokfile"
: > "$log"
chmod 600 "$tokfile" "$log"
unset JUPYTER_TOKEN
export JUPYTER_TOKEN_FILE=$tokfile
# Jupyter's runtime files (jpserver-PID.json holds the token, kernel-*.json the kernels' keys).
export JUPYTER_RUNTIME_DIR=$run/jupyter

cmd=("$venv/bin/jupyter-lab" --no-browser --ServerApp.root_dir="$repo/notebooks")
if [ -n "$sock" ]; then
  cmd+=(--ServerApp.sock="$sock" --ServerApp.sock_mode=0600)
else
  cmd+=(--ip 127.0.0.1 --port "$port" --ServerApp.port_retries=0)
fi
[ "$(id -u)" = 0 ] && cmd+=(--allow-root)  # containers and CI run as root; students do not
# PATH: the lab's jupyter first; the kernel wrapper adds cargo itself.
export PATH="$venv/bin:$PATH"
# The lab runs with your own umask, so the notebooks and files you save are as usual. Jupyter
# writes jpserver-PID-open.html (the URL with the token) with that umask, and it cannot be told
# not to write it: the file is made here first, 0600, with the pid the lab will have (the subshell
# becomes jupyter-lab through exec), and Jupyter then writes into it.
launch() {
  : > "$JUPYTER_RUNTIME_DIR/jpserver-$BASHPID-open.html"
  umask "$user_umask"
  exec "$@"
}
if [ "$background" = 1 ]; then
  ( launch nohup "${cmd[@]}" ) >> "$log" 2>&1 < /dev/null &
else
  ( launch "${cmd[@]}" ) > >(tee -a "$log") 2>&1 &
fi
pid=$!
stop_lab() {
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -f "$JUPYTER_RUNTIME_DIR/jpserver-$pid-open.html"  # in case Jupyter did not get to remove it
  # Jupyter leaves its socket file behind when it stops (only `jupyter server stop` removes it):
  # seen on a real Slurm cluster, one stale lab-JOBID.sock per job (tests/cluster.sh)
  if [ -n "$sock" ] && [ -S "$sock" ] && [ -O "$sock" ]; then rm -f "$sock"; fi
}
if [ "$background" != 1 ]; then
  # In the foreground the lab lives as long as this script, however the script ends.
  trap 'stop_lab' EXIT
  trap 'exit 130' INT TERM HUP
fi

# Wait until the server answers (at most 60 s), over the port or the socket. The probe reads the
# token from its file; it also checks that a request WITHOUT the token is refused.
probe() {
  "$py" - "${sock:-$port}" "$tokfile" <<'PY' 2>/dev/null
import http.client, socket, sys
where, tokfile = sys.argv[1], sys.argv[2]
with open(tokfile) as f:
    token = f.read()

class UnixHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(where)

def status(headers):
    if where.isdigit():
        c = http.client.HTTPConnection("127.0.0.1", int(where), timeout=2)
    else:
        c = UnixHTTPConnection("localhost", timeout=2)
    c.request("GET", "/api/status", headers=headers)
    r = c.getresponse()
    r.read()
    return r.status

try:
    with_token = status({"Authorization": "token " + token})
except OSError:
    sys.exit(2)  # not listening yet
if with_token != 200:
    sys.exit(3)  # the server does not take this token
sys.exit(0 if status({}) in (401, 403) else 4)  # 4: it lets anyone in
PY
}
rc=1
for _ in $(seq 120); do
  rc=0; probe || rc=$?
  [ "$rc" = 2 ] || break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
# An answer from a server that is not ours (a port taken meanwhile) while ours failed: not started.
if [ "$rc" != 0 ] && ! kill -0 "$pid" 2>/dev/null; then rc=1; fi
if [ "$rc" != 0 ]; then
  stop_lab
  case $rc in
    3) echo "start-lab.sh: JupyterLab started but refused this script's token: a Jupyter config file of yours sets
  a token of its own (c.IdentityProvider.token or c.ServerApp.token; 'jupyter --paths' lists the
  config folders, e.g. ~/.jupyter). Remove that line and start again." >&2 ;;
    4) echo "start-lab.sh: STOPPED: JupyterLab let in a request WITHOUT the token, so any user of this server could
  run code as you. A Jupyter config file of yours turns the token off (c.IdentityProvider.token = ''
  or c.ServerApp.token = ''; 'jupyter --paths' lists the config folders, e.g. ~/.jupyter).
  Remove that line and start again." >&2 ;;
    *) echo "start-lab.sh: JupyterLab did not start; its log ($log) ends with:" >&2
       tail -20 "$log" >&2 ;;
  esac
  exit 1
fi

if [ -n "${MOE_LENS_SERVER:-}" ]; then
  # the notebooks' load goes to the shared model server and ignores MOE_LENS_MODEL
  model_line="the moe-lens server at $MOE_LENS_SERVER (MOE_LENS_SERVER)"
else
  model_line=${MOE_LENS_MODEL:-"allenai/OLMoE-1B-7B-0924 (MOE_LENS_MODEL unset)"}
fi
jump_hint="
If this server is a compute node reached through a login node, add: -J $user@LOGIN-NODE"
[ -z "${MOE_LENS_LOGIN_NODE:-}" ] || jump_hint=""
if [ -n "$sock" ]; then
  where="on the Unix socket $sock (pid $pid)"
  tunnel="ssh -N -L 8888:$sock ${MOE_LENS_LOGIN_NODE:+-J $user@$MOE_LENS_LOGIN_NODE }$user@$host"
  url="http://localhost:8888/lab?token=$token"
  lport=8888
  who="Only you can connect to the socket."
  why="(If ssh says 'administratively prohibited' or 'open failed', this server does not forward to
sockets: start the lab without --socket.)"
else
  where="port $port (pid $pid)"
  tunnel="ssh -N -L $port:localhost:$port ${MOE_LENS_LOGIN_NODE:+-J $user@$MOE_LENS_LOGIN_NODE }$user@$host"
  url="http://localhost:$port/lab?token=$token"
  lport=$port
  who="Other users of this server can reach port $port but not get in without the token
(--socket: they cannot even reach it)."
  why=""
fi
cat <<EOF

================================================================================
JupyterLab is running on $host, $where, serving $repo/notebooks
Model for the notebooks: $model_line

On your laptop, 1. open the tunnel (leave it running; it prints nothing):

    $tunnel

2. open in the browser:

    $url

(If port $lport is busy on your laptop, change the FIRST number in the ssh line and in the URL.$jump_hint)
${why:+$why
}
The token is yours alone: do not share the URL. $who
It is also in $tokfile (only you can read it).
================================================================================
EOF
if [ "$background" = 1 ]; then
  echo "Running in the background; log: $log"
  echo "Stop it with:  kill $pid"
else
  echo "Stop with Ctrl-C (the server's log follows)."
  trap 'exit 0' INT TERM  # (the EXIT trap stops the lab)
  wait "$pid"
fi
