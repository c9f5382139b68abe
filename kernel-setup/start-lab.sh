#!/usr/bin/env bash
# Starts JupyterLab on notebooks/ for use through an SSH tunnel, and prints the two things to do on
# your laptop: the `ssh -N -L …` line and the URL (with its token) to open.
#
#   kernel-setup/start-lab.sh [--port N] [--background]
#
#   --port N       port on this server (default 8888; if it is taken, the next free one is used and
#                  the script says so)
#   --background   keep running after this script ends (log in $MOE_LENS_HOME/lab-PORT.log); the
#                  stop command is printed. Default: run in the foreground until Ctrl-C (use tmux or
#                  screen if your SSH session may drop).
#
# The notebooks read MOE_LENS_MODEL (see kernel-setup/install.sh's last lines); set it here:
#   MOE_LENS_MODEL=/path/to/checkpoint kernel-setup/start-lab.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
home=${MOE_LENS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/moe-lens}
venv=$home/lab-venv
port=8888
background=0
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --port=*) port=${1#--port=}; shift ;;
    --background) background=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "start-lab.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case $port in ''|*[!0-9]*) echo "start-lab.sh: --port wants a number, got '$port'" >&2; exit 2 ;; esac

if [ ! -x "$venv/bin/jupyter-lab" ]; then
  echo "start-lab.sh: JupyterLab is not installed in $venv: run kernel-setup/install.sh first" >&2
  exit 1
fi
py=$venv/bin/python
# (The list is read whole first: with `| grep -q`, grep's early exit can make jupyter fail on a
# broken pipe, and pipefail then reported a registered kernel as missing, 1 run in 5 here.)
specs=$("$venv/bin/jupyter" kernelspec list 2>/dev/null || true)
if ! grep -q '^ *moe-lens-rust ' <<< "$specs"; then
  echo "start-lab.sh: the kernel 'moe-lens-rust' is not registered: run kernel-setup/install.sh" >&2
  exit 1
fi

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
if [ -z "$free" ]; then echo "start-lab.sh: no free port in $port..$((port + 99))" >&2; exit 1; fi
if [ "$free" != "$port" ]; then
  echo "start-lab.sh: port $port is taken (another lab, maybe another user's), using $free instead"
  port=$free
fi

token=$("$py" -c 'import secrets; print(secrets.token_hex(24))')
host=$(hostname -f 2>/dev/null || hostname)
user=${USER:-$(id -un)}
mkdir -p "$home"
log=$home/lab-$port.log

cmd=("$venv/bin/jupyter-lab" --no-browser --ip 127.0.0.1 --port "$port" --ServerApp.port_retries=0
     --ServerApp.root_dir="$repo/notebooks" --IdentityProvider.token="$token")
[ "$(id -u)" = 0 ] && cmd+=(--allow-root)  # containers and CI run as root; students do not
# PATH: the lab's jupyter first; the kernel wrapper adds cargo itself.
export PATH="$venv/bin:$PATH"
if [ "$background" = 1 ]; then
  nohup "${cmd[@]}" > "$log" 2>&1 &
else
  "${cmd[@]}" > >(tee "$log") 2>&1 &
fi
pid=$!

# Wait until the server answers (at most 60 s).
ok=0
for _ in $(seq 120); do
  if "$py" - "$port" "$token" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/status?token={sys.argv[2]}", timeout=2).read()
PY
  then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$ok" != 1 ]; then
  echo "start-lab.sh: JupyterLab did not start; its log ($log) ends with:" >&2
  tail -20 "$log" >&2
  exit 1
fi

cat <<EOF

================================================================================
JupyterLab is running on $host, port $port (pid $pid), serving $repo/notebooks
Model for the notebooks: ${MOE_LENS_MODEL:-allenai/OLMoE-1B-7B-0924 (MOE_LENS_MODEL unset)}

On your laptop, 1. open the tunnel (leave it running; it prints nothing):

    ssh -N -L $port:localhost:$port $user@$host

2. open in the browser:

    http://localhost:$port/lab?token=$token

(If port $port is busy on your laptop, change the FIRST number in the ssh line and in the URL.
If this server is a compute node reached through a login node, add: -J $user@LOGIN-NODE)
================================================================================
EOF
if [ "$background" = 1 ]; then
  echo "Running in the background; log: $log"
  echo "Stop it with:  kill $pid"
else
  echo "Stop with Ctrl-C (the server's log follows)."
  trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 0' INT TERM
  wait "$pid"
fi
