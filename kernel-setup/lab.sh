#!/usr/bin/env bash
# The one command for students: set up (or check) the Rust kernel and JupyterLab, then start the lab
# on notebooks/ and print the ssh tunnel line and the URL to open on your laptop.
#
#   kernel-setup/lab.sh [--port N | --socket [PATH]] [--background]
#
# = kernel-setup/install.sh (first time: about 20 minutes on 2 cores, later: seconds)
#   followed by kernel-setup/start-lab.sh with the same arguments.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/install.sh"
exec "$here/start-lab.sh" "$@"
