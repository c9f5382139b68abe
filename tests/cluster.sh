#!/usr/bin/env bash
# The class set-up of issue #14 on a REAL single-node Slurm cluster (slurmctld + slurmd + munged,
# Slurm 22.05 from Debian 12's slurm-wlm), with real Unix users: an instructor and two students in
# one class group. It follows INSTRUCTORS.md's commands:
#
#  1. a temporary Slurm: its own slurm.conf and gres.conf (SLURM_CONF), spool, state, logs and
#     munge key under one temp folder; one node, partition `gpu`, a fake `gpu` gres (Count=1; its
#     "device" a private node with /dev/null's numbers, since Slurm drops a gpu gres without one)
#     so that the scripts' `--gres=gpu:1` is accepted. The node is declared with 16 CPUs and
#     64 GB (SlurmdParameters=config_overrides) so that the scripts' #SBATCH lines are accepted as
#     written (the server asks 8 CPUs and 32G, a lab 4 and 16G); the jobs share the machine's real
#     cores. Nothing of the system's Slurm or munge set-up is used or changed.
#  2. the instructor (in the class group) submits kernel-setup/slurm-serve.sbatch on the demo model
#     (MOE_LENS_DEVICE=cpu: no GPU here); each student runs the set-up line of a shared install
#     (reused from tests/shared-install.sh, else made once: long), then `sbatch
#     kernel-setup/slurm-lab.sbatch` from ~/moe-lens-lab with MOE_LENS_SERVER set; checked: the
#     job's output file is 0600 and holds the ssh line and the URL, the socket is in the student's
#     0700 folder, the other student can neither connect to it nor read the output, the lab
#     answers with the token and refuses without it
#  3. a kernel started through one lab's REST API on its socket (tests/cluster_kernel.py) runs
#     `:dep moe-lens`, `load("demo")` (which goes to the model server), a trace and 1+1; timed
#  4. scancel: the jobs, their processes and the labs' sockets are gone
#
# At the end (or on failure) the daemons are stopped, the users, their homes and the group are
# removed, and the temp folder deleted: the machine is left as it was, apart from the packages.
#
#   sudo tests/cluster.sh                              # needs root (useradd, slurmd)
#   sudo MOE_LENS_CLUSTER_INSTALL=1 tests/cluster.sh   # apt-get install slurm-wlm munge first
#
# Without Slurm (and without MOE_LENS_CLUSTER_INSTALL=1), or not as root, it prints "skipped" and
# exits 0. Settings: MOE_LENS_SHARED_CI_PREFIX (the shared install, default /tmp/moe-lens-shared-ci),
# MOE_LENS_CLUSTER_BIN (the moe-lens CLI, default $CARGO_TARGET_DIR/debug/moe-lens), and
# MOE_LENS_CLUSTER_KEEP=1 (leave everything running for a look; clean up by running it again).
# Takes 4-7 minutes on a 2-core VM with the shared install in place (the hub part included). Not in
# .ci/run (the lead decides).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
say() { echo "cluster: $*"; }
fail() { echo "cluster: FAILED: $*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
  say "skipped: needs root (it makes Unix users and runs slurmd): sudo tests/cluster.sh"; exit 0
fi
need="slurmctld slurmd sbatch squeue scancel scontrol munged curl"
missing=""
for c in $need; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
if [ -n "$missing" ]; then
  if [ "${MOE_LENS_CLUSTER_INSTALL:-0}" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge curl >/dev/null
  else
    say "skipped: not installed:$missing. Run it as  MOE_LENS_CLUSTER_INSTALL=1 tests/cluster.sh  (apt-get install slurm-wlm munge curl)"
    exit 0
  fi
fi

prefix=${MOE_LENS_SHARED_CI_PREFIX:-/tmp/moe-lens-shared-ci}
bin=${MOE_LENS_CLUSTER_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/moe-lens}
[ -x "$bin" ] || fail "no moe-lens CLI at $bin: cargo build -p moe-lens-cli (or set MOE_LENS_CLUSTER_BIN)"
# the instructor's shared install, from this tree (as tests/shared-install.sh: kept between runs,
# only what changed is redone; the first time, and after the crates change, it is long). The
# students' ~/moe-lens-lab/kernel-setup links to PREFIX/src/kernel-setup: this makes it this tree's.
t0=$(date +%s)
bash kernel-setup/install.sh --shared "$prefix" > "/tmp/moe-lens-cluster-install.log" 2>&1 \
  || { tail -20 /tmp/moe-lens-cluster-install.log; fail "the shared install into $prefix"; }
say "shared install $prefix up to date ($(( $(date +%s) - t0 )) s; log /tmp/moe-lens-cluster-install.log)"
py=$prefix/lab-venv/bin/python

group=mlc-class
teacher=mlc-teacher
students="mlc-ana mlc-ben"
users="$teacher $students"
host=$(hostname -s)
ctld_port=26817 slurmd_port=26818   # and, for the hub, 18000 (proxy), 18001 (its API), 18081 (hub)
state=/tmp/moe-lens-cluster.state   # the temp folder of a kept run, for the next run to clean up

stop_all() {
  local T=$1
  if [ -n "$T" ] && [ -f "$T/slurm.conf" ]; then
    SLURM_CONF=$T/slurm.conf scancel --quiet --user="$teacher" 2>/dev/null || true
    for u in $students; do SLURM_CONF=$T/slurm.conf scancel --quiet --user="$u" 2>/dev/null || true; done
    for p in hub proxy slurmd slurmctld munged; do
      if [ -f "$T/run/$p.pid" ]; then
        pid=$(cat "$T/run/$p.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      fi
    done
  fi
  for u in $users; do
    if id "$u" >/dev/null 2>&1; then
      for pid in $(pgrep -u "$u" || true); do kill "$pid" 2>/dev/null || true; done
      sleep 0.5
      for pid in $(pgrep -u "$u" || true); do kill -9 "$pid" 2>/dev/null || true; done
      userdel -r "$u" >/dev/null 2>&1 || true
    fi
    rm -rf "/var/tmp/moe-lens-$u" "/tmp/moe-lens-$u"
  done
  getent group "$group" >/dev/null && groupdel "$group"
  rm -rf "/tmp/moe-lens-serve-$group"
  if [ -n "$T" ]; then rm -rf "$T"; fi
  rm -f "$state"
}
# a kept run from before
if [ -f "$state" ]; then say "cleaning up a kept run ($(cat "$state"))"; stop_all "$(cat "$state")"; fi
for u in $users; do id "$u" >/dev/null 2>&1 && fail "the user $u exists already: remove it (userdel -r $u) or it is another test's"; done
getent group "$group" >/dev/null && fail "the group $group exists already (groupdel $group)"
for p in $ctld_port $slurmd_port 18000 18001 18081; do
  ss -ltn | grep -q ":$p " && fail "port $p is taken (another Slurm? another run of this test?)"
done

T=$(mktemp -d /tmp/moe-lens-cluster.XXXXXX)
chmod 755 "$T"
cleanup() {
  rc=$?
  if [ "${MOE_LENS_CLUSTER_KEEP:-0}" = 1 ]; then
    echo "$T" > "$state"
    say "kept: SLURM_CONF=$T/slurm.conf; users $users; run tests/cluster.sh again to clean up"
  else
    stop_all "$T"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. munge and Slurm, private to this run ---------------------------------------------------
mkdir -p "$T/munge" "$T/run" "$T/log" "$T/state" "$T/spool/slurmd"
chmod 700 "$T/run" "$T/log" "$T/state"
chmod 755 "$T/spool" "$T/spool/slurmd"   # the jobs' users run their scripts from there
chmod 755 "$T/munge"   # the socket's folder: every user's sbatch talks to munged
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" \
  --pid-file="$T/run/munged.pid" --log-file="$T/log/munged.log" --seed-file="$T/run/munged.seed" \
  || fail "munged did not start: $(tail -5 "$T/log/munged.log" 2>/dev/null)"
: > "$T/plugstack.conf"
cat > "$T/slurm.conf" <<EOF
# tests/cluster.sh: a one-node test cluster; nothing here is the system's
ClusterName=moelens
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool/slurmd
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
PlugStackConfig=$T/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=16 RealMemory=65536 Gres=gpu:1 State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# Slurm drops a gpu gres without a device file ("Removing file-less GPU") and wants a character
# device: a private node with /dev/null's numbers stands in for /dev/nvidia0
mkdir -p "$T/dev"
mknod -m 666 "$T/dev/nvidia0" c 1 3
cat > "$T/gres.conf" <<EOF
NodeName=$host Name=gpu Count=1 File=$T/dev/nvidia0
EOF
chmod 644 "$T/slurm.conf" "$T/gres.conf"
export SLURM_CONF=$T/slurm.conf
slurmctld -i || fail "slurmctld did not start: $(tail -5 "$T/log/slurmctld.log" 2>/dev/null)"
slurmd || fail "slurmd did not start: $(tail -5 "$T/log/slurmd.log" 2>/dev/null)"
for _ in $(seq 60); do
  st=$(sinfo -h -N -o '%T' 2>/dev/null || true)
  [ "$st" = idle ] && break
  sleep 1
done
[ "$st" = idle ] || fail "the node is not idle after 60 s: '$st' ($(tail -3 "$T/log/slurmctld.log"))"
say "Slurm $(sinfo -V | awk '{print $2}') up: $(sinfo -h -N -o '%N %c CPUs %m MB %G %T')"

# --- 2. the class: a group, the instructor and two students -------------------------------------
groupadd "$group"
for u in $users; do useradd -m -s /bin/bash -G "$group" "$u"; done
# many universities' homes are world-readable: so that what keeps a classmate out is the modes of
# the lab's own files and folders, not the home's
for u in $users; do chmod 755 "$(getent passwd "$u" | cut -d: -f6)"; done
as() {  # as USER COMMAND...: a clean login-like environment, plus this test's SLURM_CONF
  local u=$1; shift
  local h; h=$(getent passwd "$u" | cut -d: -f6)
  runuser -u "$u" -- env -i HOME="$h" USER="$u" LOGNAME="$u" SHELL=/bin/bash \
    PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 SLURM_CONF="$SLURM_CONF" "$@"
}
home_of() { getent passwd "$1" | cut -d: -f6; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$1 what=$2 end=$(( $(date +%s) + $1 )); shift 2
  while [ "$(date +%s)" -le "$end" ]; do "$@" && return 0; sleep 0.5; done
  fail "$what: not after $n s"
}
jobstate() { squeue -h -j "$1" -o %T 2>/dev/null || true; }
wait_job() {  # wait_job SECONDS JOB OUTPUT DESCRIPTION COMMAND...: fails at once if the job ends
  local n=$1 j=$2 o=$3 what=$4 end=$(( $(date +%s) + $1 )); shift 4
  while [ "$(date +%s)" -le "$end" ]; do
    "$@" && return 0
    if [ -z "$(jobstate "$j")" ]; then
      sed 's/^/    | /' "$o" >&2 || true
      grep -h "error" "$T/log/slurmd.log" | grep -v -i 'pmix\|mpi' | tail -3 >&2 || true
      fail "$what: job $j ended"
    fi
    sleep 0.5
  done
  fail "$what: not after $n s (job $j: $(jobstate "$j"))"
}

# the CLI where the instructor can run it (a release install would put it in PREFIX/bin)
install -d -m 755 "$T/bin"
install -m 755 "$bin" "$T/bin/moe-lens"

# (a) the instructor: the model server, as INSTRUCTORS.md and slurm-serve.sbatch say
th=$(home_of "$teacher")
as "$teacher" cp "$repo/kernel-setup/slurm-serve.sbatch" "$th/"
t0=$(date +%s%N)
sj=$(as "$teacher" bash -c "cd ~ && MOE_LENS_DEVICE=cpu sbatch --parsable \
  --export=ALL,MOE_LENS_GROUP=$group,MOE_LENS_MODEL=demo,MOE_LENS_BIN=$T/bin/moe-lens slurm-serve.sbatch") \
  || fail "sbatch slurm-serve.sbatch refused"
server=/tmp/moe-lens-serve-$group/olmoe.sock
wait_job 120 "$sj" "$th/moe-lens-serve-$sj.out" "the model server's socket $server" test -S "$server"
serve_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
say "model server: job $sj on $(squeue -h -j "$sj" -o %N), socket up $((serve_ms / 1000)).$((serve_ms % 1000 / 100)) s after sbatch"
sed 's/^/    | /' "$th/moe-lens-serve-$sj.out"
[ "$(stat -c '%a %G' "$server")" = "660 $group" ] || fail "the server's socket is $(stat -c '%a %G' "$server"), not 660 $group"
[ "$(stat -c '%a %G' "$(dirname "$server")")" = "750 $group" ] || fail "the server's folder is $(stat -c '%a %G' "$(dirname "$server")")"

# (b) each student: the set-up line, then the lab as a Slurm job on the server's node
node=$(squeue -h -j "$sj" -o %N)
# the lab script as it stands asks for a GPU, which the server holds: it would wait until the
# server's job ends (sbatch --test-only says when it would start); hence --gres=none below
when=$(as "$teacher" bash -c "cd /tmp && sbatch --test-only --nodelist=$node $repo/kernel-setup/slurm-lab.sbatch" 2>&1 | sed -n 's/.* to start at \([^ ]*\) .*/\1/p')
[ -n "$when" ] || fail "sbatch --test-only of the lab script said nothing"
[ "$(date -d "$when" +%s)" -gt $(( $(date +%s) + 3600 )) ] || fail "a lab asking for the server's GPU would start at $when, not after the server's job"
say "a lab with its own --gres=gpu:1 on the server's node would start at $when (when the server's job ends): --gres=none"
declare -A job sock out sub
for u in $students; do
  h=$(home_of "$u")
  t0=$(date +%s%N)
  as "$u" bash "$prefix/src/kernel-setup/install.sh" > "$T/setup-$u.log" 2>&1 || { cat "$T/setup-$u.log"; fail "$u's set-up"; }
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  say "$u: set-up from $prefix in $((ms / 1000)).$((ms % 1000 / 100)) s"
  # INSTRUCTORS.md: the labs share the server's node and need no GPU of their own
  sub[$u]=$(date +%s%N)
  job[$u]=$(as "$u" bash -c "cd ~/moe-lens-lab && MOE_LENS_SERVER=$server MOE_LENS_DEVICE=cpu \
    sbatch --parsable --nodelist=$node --gres=none --cpus-per-task=2 --mem=4G kernel-setup/slurm-lab.sbatch") || fail "$u: sbatch slurm-lab.sbatch refused"
  out[$u]=$h/moe-lens-lab/moe-lens-lab-${job[$u]}.out
  sock[$u]=$h/.local/share/moe-lens/run/lab-${job[$u]}.sock
done
for u in $students; do
  wait_job 120 "${job[$u]}" "${out[$u]}" "$u's lab" grep -qs 'http://localhost:8888/lab?token=' "${out[$u]}"
  ms=$(( ($(date +%s%N) - ${sub[$u]}) / 1000000 ))
  say "$u: lab job ${job[$u]} running on $(squeue -h -j "${job[$u]}" -o %N), URL in its output by $((ms / 1000)).$((ms % 1000 / 100)) s after sbatch"
done
for u in $students; do
  o=${out[$u]} s=${sock[$u]}
  [ "$(stat -c %a "$o")" = 600 ] || fail "$o is mode $(stat -c %a "$o"), not 600"
  # two ssh lines (slurm-lab.sbatch's and start-lab.sh's), both through the login node
  [ "$(grep -c "ssh -N -L 8888:$s -J $u@" "$o")" = 2 ] || { cat "$o"; fail "$o has not two tunnel lines to $s through the login node"; }
  [ "$(grep -c "ssh -N -L" "$o")" = 2 ] || fail "$o has an ssh line that does not go through the login node"
  grep -q "Model for the notebooks: the moe-lens server at $server" "$o" || fail "$o does not name the model server"
  grep -q "http://localhost:8888/lab?token=" "$o" || fail "$o has no URL"
  [ -S "$s" ] || fail "no socket $s"
  [ "$(stat -c %a "$(dirname "$s")")" = 700 ] || fail "$(dirname "$s") is not 0700"
  [ "$(stat -c %U "$s")" = "$u" ] || fail "$s is not $u's"
  token=$(grep -o 'http://localhost:8888/lab?token=[0-9a-f]*' "$o" | head -1 | sed 's/.*token=//')
  [ "${#token}" -ge 32 ] || fail "no token in $o's URL"
  "$py" - "$token" <<'PY' || fail "a process's arguments hold $u's token"
import os, sys
token = sys.argv[1].encode()
me = str(os.getpid())
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read()
    except OSError:
        continue
    if pid != me and token in args:
        print("cluster: process", pid, args.replace(b"\0", b" ")[:200])
        sys.exit(1)
PY
  tok=$(dirname "$s")/lab-socket-lab-${job[$u]}.token
  [ "$(stat -c %a "$tok")" = 600 ] || fail "$tok is not 0600"
  # the lab answers with the token (in a 0600 header file: never on a command line), not without
  hdr=$(dirname "$s")/curl-header   # in the student's 0700 folder
  as "$u" bash -c 'umask 077; printf "Authorization: token %s\n" "$(cat "$1")" > "$2"' _ "$tok" "$hdr"
  code=$(as "$u" curl -s -o /dev/null -w '%{http_code}' --unix-socket "$s" -H "@$hdr" http://localhost/api/status)
  [ "$code" = 200 ] || fail "$u's lab answered $code with the token"
  code=$(as "$u" curl -s -o /dev/null -w '%{http_code}' --unix-socket "$s" http://localhost/api/status)
  [ "$code" = 403 ] || [ "$code" = 401 ] || fail "$u's lab answered $code WITHOUT the token"
  rm -f "$hdr"
  say "$u: output 0600 with the tunnel line and URL; socket $s in a 0700 folder; 200 with the token, $code without"
done
set -- $students; ana=$1 ben=$2
# refused for want of permission (not for some other reason that would make the check vacuous)
as "$ben" "$py" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(0)
except OSError as e:
    sys.exit(f"not a permission error: {e}")
sys.exit("connected")' "${sock[$ana]}" || fail "$ben could connect to $ana's lab socket, or the check failed"
if as "$ben" cat "${out[$ana]}" >/dev/null 2>&1; then fail "$ben could read $ana's job output (the token)"; fi
if as "$ben" ls "$(dirname "${sock[$ana]}")" >/dev/null 2>&1; then fail "$ben could list $ana's run folder"; fi
say "$ben cannot connect to $ana's socket, read her job's output or list her run folder"

# (c) one notebook's work through ana's lab: a kernel over the REST API on the socket
cat > "$T/cells.json" <<'EOF'
[
 {"code": ":dep moe-lens = { path = \"../crates/moe-lens\" }\nuse moe_lens::prelude::*;\nprintln!(\"moe-lens is ready\");", "expect": "moe-lens is ready"},
 {"code": "let lens = load(\"demo\")?;\nprintln!(\"{lens}\");", "expect": "on the moe-lens server at"},
 {"code": "let trace = lens.trace(\"The quick brown fox jumps. 안녕하세요.\")?;\nprintln!(\"{} tokens traced\", trace.tokens.len());", "expect": "tokens traced"},
 {"code": "1 + 1", "expect": "2"}
]
EOF
chmod 644 "$T/cells.json"
tok=$(dirname "${sock[$ana]}")/lab-socket-lab-${job[$ana]}.token
t0=$(date +%s%N)
as "$ana" "$py" "$repo/tests/cluster_kernel.py" "${sock[$ana]}" "$tok" "$T/cells.json" || fail "the cells through $ana's lab"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
say "$ana: kernel start + 4 cells through the lab's socket in $((ms / 1000)).$((ms % 1000 / 100)) s"

# (d) scancel: jobs, processes and the labs' sockets gone
for u in $students; do as "$u" scancel "${job[$u]}"; done
as "$teacher" scancel "$sj"
job_gone() { [ -z "$(jobstate "$1")" ]; }
no_process() { [ -z "$(pgrep -u "$1" || true)" ]; }
t0=$(date +%s%N)
for j in "$sj" "${job[@]}"; do wait_for 60 "job $j ending" job_gone "$j"; done
for u in $users; do wait_for 30 "$u's processes ending" no_process "$u"; done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
for u in $students; do [ -e "${sock[$u]}" ] && fail "${sock[$u]} is still there after scancel"; done
say "after scancel ($((ms / 1000)).$((ms % 1000 / 100)) s): no job, no process of the class's users, the labs' sockets removed$( [ -e "$server" ] && echo "; the server's stale socket stays (the next server replaces it)")"

# --- 5. JupyterHub (optional): LocalProcessSpawner, then batchspawner's SlurmSpawner ------------
hubv=${MOE_LENS_CLUSTER_HUB:-}
if [ -z "$hubv" ]; then
  say "JupyterHub: skipped (set MOE_LENS_CLUSTER_HUB to a venv with jupyterhub, batchspawner and jupyterlab, and put configurable-http-proxy on PATH)"
  say "passed"; exit 0
fi
[ -x "$hubv/bin/jupyterhub" ] && [ -x "$hubv/bin/batchspawner-singleuser" ] || fail "$hubv has no jupyterhub or batchspawner"
command -v configurable-http-proxy >/dev/null || fail "configurable-http-proxy is not on PATH (npm install configurable-http-proxy)"
command -v sudo >/dev/null || fail "batchspawner submits with sudo -E -u USER: apt-get install sudo"
# the system-wide kernel spec, in the Python environment the single-user servers run from
bash kernel-setup/install.sh --shared "$prefix" --kernelspec-system "$hubv" > "$T/install-hub.log" 2>&1 \
  || { tail -20 "$T/install-hub.log"; fail "install.sh --shared --kernelspec-system $hubv"; }
[ -f "$hubv/share/jupyter/kernels/moe-lens-rust/kernel.json" ] || fail "no system kernel spec in $hubv"
# ben's own kernel spec (from the set-up) would hide the system one: the hub must show the system one
as "$ben" rm -rf "$(home_of "$ben")/.local/share/jupyter/kernels/moe-lens-rust"
hub=$T/hub; mkdir -m 700 "$hub"
"$py" -c 'import secrets; print(secrets.token_hex(32))' > "$hub/token"; chmod 600 "$hub/token"
printf 'Authorization: token %s\n' "$(cat "$hub/token")" > "$hub/header"; chmod 600 "$hub/header"
# INSTRUCTORS.md's jupyterhub_config.py for batchspawner on Slurm, as printed there
awk '/^## JupyterHub with batchspawner on Slurm/ { s = 1 } s && /^```python/ { p = 1; next } p && /^```/ { exit } p' \
  "$repo/INSTRUCTORS.md" > "$hub/instructors_config.py"
grep -q SlurmSpawner "$hub/instructors_config.py" || fail "no SlurmSpawner config in INSTRUCTORS.md"
cat > "$hub/jupyterhub_config.py" <<EOF
import os
c = get_config()  # noqa
if os.environ["MLC_SPAWNER"] == "slurm":
    exec(open("$hub/instructors_config.py").read())
    # INSTRUCTORS.md's single-user environment is /shared/jupyter-env: here, the test's venv
    c.SlurmSpawner.batch_script = c.SlurmSpawner.batch_script.replace("/shared/jupyter-env", "$hubv")
    # this machine: no GPU, the demo model, this test's Slurm
    c.Spawner.environment = {"MOE_LENS_MODEL": "demo", "MOE_LENS_DEVICE": "cpu", "SLURM_CONF": "$SLURM_CONF"}
else:
    c.JupyterHub.spawner_class = "localprocess"
    c.Spawner.environment = {"MOE_LENS_MODEL": "demo"}
c.JupyterHub.bind_url = "http://127.0.0.1:18000"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:18081"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:18001"
c.JupyterHub.db_url = "sqlite:///$hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "$hub/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "$T/run/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {"$ana", "$ben"}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120
c.JupyterHub.services = [{"name": "cluster-test", "api_token": open("$hub/token").read().strip()}]
c.JupyterHub.load_roles = [{"name": "cluster-test", "services": ["cluster-test"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "list:users", "read:users"]}]
EOF
chmod 600 "$hub/jupyterhub_config.py"
hubapi() { curl -s -H "@$hub/header" -o "$hub/reply" -w '%{http_code}' -X "$1" "http://127.0.0.1:18000/hub/api$2"; }
ready() { hubapi GET "/users/$ben" >/dev/null && "$py" -c 'import json,sys; s=json.load(open(sys.argv[1]))["servers"].get(""); sys.exit(0 if s and s["ready"] else 1)' "$hub/reply"; }
stopped() { hubapi GET "/users/$ben" >/dev/null && "$py" -c 'import json,sys; sys.exit(1 if json.load(open(sys.argv[1]))["servers"].get("") else 0)' "$hub/reply"; }
hub_up() { [ "$(hubapi GET /)" = 200 ]; }
no_job_of() { [ -z "$(squeue -h -u "$1")" ]; }
cat > "$T/hub-cells.json" <<'EOF'
[
 {"code": "1 + 1", "expect": "2"},
 {"code": ":dep moe-lens = { path = \"../crates/moe-lens\" }\nuse moe_lens::prelude::*;\nlet lens = Lens::from_env()?;\nlet trace = lens.trace(\"Hello. 안녕하세요.\")?;\nprintln!(\"{} tokens traced on {lens}\", trace.tokens.len());", "expect": "tokens traced on demo"}
]
EOF
chmod 644 "$T/hub-cells.json"
for spawner in local slurm; do
  (cd "$hub" && exec env MLC_SPAWNER=$spawner PATH="$hubv/bin:$PATH" "$hubv/bin/jupyterhub" -f "$hub/jupyterhub_config.py") \
    > "$hub/hub-$spawner.log" 2>&1 &
  hubpid=$!; echo "$hubpid" > "$T/run/hub.pid"
  wait_for 60 "JupyterHub ($spawner) answering" hub_up
  t0=$(date +%s%N)
  code=$(hubapi POST "/users/$ben/server")
  case $code in 201|202) ;; *) cat "$hub/reply"; tail -20 "$hub/hub-$spawner.log"; fail "starting $ben's server: $code" ;; esac
  if ! (wait_for 200 "$ben's server ($spawner) ready" ready); then
    tail -20 "$hub/hub-$spawner.log"; tail -20 "$(home_of "$ben")"/jupyterhub_slurmspawner_*.log 2>/dev/null
    fail "$ben's server ($spawner) did not start"
  fi
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  jobinfo=""
  [ "$spawner" = slurm ] && jobinfo=" (Slurm job $(squeue -h -u "$ben" -o '%i on %N, %T'))"
  say "JupyterHub $("$hubv/bin/jupyterhub" --version), $spawner spawner: $ben's server ready in $((ms / 1000)).$((ms % 1000 / 100)) s$jobinfo"
  t0=$(date +%s%N)
  "$py" "$repo/tests/cluster_kernel.py" "http://127.0.0.1:18000/user/$ben/" "$hub/token" "$T/hub-cells.json" \
    moe-lens-rust moe-lens-lab/notebooks/01_Router_Analysis.ipynb \
    || { tail -30 "$hub/hub-$spawner.log"; fail "the kernel through the hub ($spawner)"; }
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  say "JupyterHub, $spawner spawner: system kernel spec listed, kernel start + 2 cells in $((ms / 1000)).$((ms % 1000 / 100)) s"
  hubapi DELETE "/users/$ben/server" >/dev/null
  wait_for 60 "$ben's server stopping" stopped
  if [ "$spawner" = slurm ]; then wait_for 60 "$ben's spawner job ending" no_job_of "$ben"; fi
  kill "$hubpid"; wait "$hubpid" 2>/dev/null || true
  if [ -f "$T/run/proxy.pid" ]; then kill "$(cat "$T/run/proxy.pid")" 2>/dev/null || true; fi
  rm -f "$T/run/hub.pid" "$T/run/proxy.pid"
done
say "passed"
