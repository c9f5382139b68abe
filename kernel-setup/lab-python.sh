# The lab's Python environment, in one place: sourced (not run) by install.sh, shared-install.sh
# and bundle.sh, so that the pinned versions, the venv and the pip calls are the same in all three.
#
#   lab_pins                       the exact pins of what goes into the lab's virtual environment
#   lab_make_venv VENV PY          makes VENV with PY (>= 3.9), falling back to virtualenv when
#                                  `PY -m venv` is missing (needs the network); returns non-zero
#                                  with a message on stderr when it cannot
#   lab_pins_missing VENV          prints the pins VENV lacks (empty: all there)
#   lab_pip_install VENV [WHEELS]  installs the missing pins; with WHEELS (a folder of wheels from
#                                  bundle.sh) without any network: pip --no-index --find-links WHEELS
#   lab_pip_upgrade VENV           upgrades VENV's pip (with network)
#   lab_pip_download PY DEST       the wheels of every pin and their dependencies, for PY's
#                                  platform and version (bundle.sh)

# shellcheck disable=SC2034  # used by the scripts that source this file
lab_pins=(jupyterlab==4.6.6 nbclient==0.11.0 nbconvert==7.17.2)

lab_make_venv() {
  local venv=$1 py=$2
  command -v "$py" >/dev/null 2>&1 || { echo "    $py not found: set PYTHON=/path/to/python3" >&2; return 1; }
  "$py" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
    || { echo "    Python >= 3.9 needed; set PYTHON=/path/to/python3.x" >&2; return 1; }
  mkdir -p "$(dirname "$venv")"
  echo "    $py -m venv $venv"
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    echo "    '$py -m venv' failed (Debian's python3 without python3-venv?); trying virtualenv"
    rm -rf "$venv"
    if [ -n "${PIP_NO_INDEX:-}" ]; then
      echo "    offline: install python3-venv (or a Python with venv) on this machine" >&2; return 1
    fi
    "$py" -m pip install --user --quiet virtualenv && "$py" -m virtualenv --quiet "$venv"
  fi
}

lab_pins_missing() {
  "$1/bin/python" - "${lab_pins[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
out = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            out.append(pin)
    except PackageNotFoundError:
        out.append(pin)
print(" ".join(out))
PY
}

lab_pip_install() {
  local venv=$1 wheels=${2:-}
  if [ -n "$wheels" ]; then
    # no index at all, only the bundle's wheels: no pip.conf, no PIP_* settings can add another source
    env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" "${lab_pins[@]}"
  else
    "$venv/bin/python" -m pip install --quiet "${lab_pins[@]}"
  fi
}

lab_pip_upgrade() { # a recent pip first (install.sh, with network)
  "$1/bin/python" -m pip install --quiet --upgrade pip
}

lab_pip_download() {
  "$1" -m pip download --quiet --disable-pip-version-check --dest "$2" "${lab_pins[@]}"
}
