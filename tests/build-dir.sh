#!/usr/bin/env bash
# kernel-setup/build-dir.sh's check, case by case, with two real Unix users (needs root and
# useradd; skipped otherwise): where a classmate could put a cargo config above a student's build
# folder, moe_lens_cargo_unsafe must say so; where only root and the student can, it must not. The
# first case also shows why it matters: cargo really runs the classmate's rustc-wrapper.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v useradd >/dev/null 2>&1 || ! command -v runuser >/dev/null 2>&1; then
  echo "build-dir: skipped (needs root, useradd and runuser for a second and third user)"; exit 0
fi
lib=$PWD/kernel-setup/build-dir.sh
student=moe-lens-student; mate=moe-lens-classmate
for u in "$student" "$mate"; do id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"; done
as() { local u=$1; shift; runuser -u "$u" -- env -i HOME="$(getent passwd "$u" | cut -d: -f6)" PATH=/usr/bin:/bin "$@"; }
# what the check says for the student about a build folder
verdict() { as "$student" bash -c ". '$lib'; moe_lens_cargo_unsafe '$1'"; }
fails=0
expect() { # expect safe|unsafe DIR what
  local got; got=$(verdict "$2")
  if { [ "$1" = safe ] && [ -z "$got" ]; } || { [ "$1" = unsafe ] && [ -n "$got" ]; }; then
    echo "build-dir: ok: $3 -> $1${got:+ ($got)}"
  else
    echo "build-dir: FAILED: $3: expected $1, got '${got:-safe}'"; fails=$((fails + 1))
  fi
}
t=$(mktemp -d /tmp/moe-lens-build-dir.XXXXXX); chmod 755 "$t"
trap 'rm -rf "$t"' EXIT
mkdir "$t/open"; chmod 1777 "$t/open"     # as /var/tmp and /tmp

# 1. a folder all can write, no guard: the classmate plants a config, and cargo runs their program
as "$mate" bash -c "mkdir '$t/open/.cargo' && printf '#!/bin/sh\nid -un >> $t/open/ran-as\nexec \"\$@\"\n' > '$t/open/evil' \
  && chmod 755 '$t/open/evil' && printf '[build]\nrustc-wrapper = \"$t/open/evil\"\n' > '$t/open/.cargo/config.toml'"
expect unsafe "$t/open/moe-lens-$student/0" "a classmate's .cargo in a folder all can write"
if command -v cargo >/dev/null 2>&1; then
  sysroot=$(rustc --print sysroot)
  if as "$student" test -x "$sysroot/bin/cargo"; then
    as "$student" env PATH="$sysroot/bin:/usr/bin:/bin" bash -c "umask 077; mkdir -p '$t/open/s/p' && cd '$t/open/s/p' \
      && cargo init -q --vcs none --name p && cargo build -q --offline" >/dev/null 2>&1 || true
    if [ "$(cat "$t/open/ran-as" 2>/dev/null | sort -u)" = "$student" ]; then
      echo "build-dir: ok: with it, cargo ran the classmate's program as $student (why the check exists)"
    else
      echo "build-dir: note: the demonstration build did not run the wrapper ($(cat "$t/open/ran-as" 2>/dev/null))"
    fi
  fi
fi
rm -rf "$t/open/.cargo" "$t/open/s"

# 2. the same folder, no guard and nothing planted yet: anyone could still plant one later
expect unsafe "$t/open/moe-lens-$student/0" "a folder all can write, without a .cargo guard"
# 3. root's guard: safe, and the classmate cannot write into it
install -d -m 755 -o root -g root "$t/open/.cargo"
expect safe "$t/open/moe-lens-$student/0" "root's .cargo guard (0755)"
if as "$mate" bash -c "echo x > '$t/open/.cargo/config.toml'" 2>/dev/null; then
  echo "build-dir: FAILED: the classmate could write into root's guard"; fails=$((fails + 1))
fi
# 4. a guard others can write into
chmod 1777 "$t/open/.cargo"
expect unsafe "$t/open/moe-lens-$student/0" "a .cargo guard all can write"
chmod 755 "$t/open/.cargo"
# 5. a config in root's guard that belongs to the classmate (made for them by root)
echo '[build]' > "$t/open/.cargo/config.toml"; chown "$mate" "$t/open/.cargo/config.toml"
expect unsafe "$t/open/moe-lens-$student/0" "a config.toml of the classmate's in root's guard"
rm "$t/open/.cargo/config.toml"
# 6. a guard of the classmate's
rm -rf "$t/open/.cargo"; as "$mate" mkdir -m 755 "$t/open/.cargo"
expect unsafe "$t/open/moe-lens-$student/0" "a .cargo made by the classmate"
rm -rf "$t/open/.cargo"
# 7. the student's own home (root's /home, the student's 0700 or 0755 home): safe
expect safe "$(getent passwd "$student" | cut -d: -f6)/.cache/moe-lens-build" "the student's home"
# 8. through a link into the classmate's home: the real path counts
ln -s "$(getent passwd "$mate" | cut -d: -f6)" "$t/link"
expect unsafe "$t/link/build" "a link into the classmate's home"
# 9. a folder the group can write (not the student's own group)
mkdir "$t/class"; chgrp "$mate" "$t/class"; chmod 2775 "$t/class"
expect unsafe "$t/class/build" "a folder the classmate's group can write"

[ "$fails" = 0 ] || { echo "build-dir: $fails case(s) failed"; exit 1; }
echo "build-dir: passed"
