# shellcheck shell=bash
# Sourced by the moe-lens kernels (shared-kernel.sh, the wrapper install.sh writes) and installers.
#
# Why: cargo reads `.cargo/config.toml` (and `.cargo/config`) in its working folder and in EVERY
# folder above it. A kernel that builds in /var/tmp/moe-lens-you/... therefore reads
# /var/tmp/.cargo/config.toml, which any user of the server can create (/var/tmp and /tmp are
# writable by all), and such a file can name a program cargo then runs as you (`rustc-wrapper`, a
# `linker`): a classmate's code in your lab. (Checked on this project's VM with a second user: it
# ran.) rustup's proxies also read `rust-toolchain.toml` upwards; the kernels run the toolchain's
# own cargo or pin RUSTUP_TOOLCHAIN, which rustup prefers to those files.
#
# So a kernel builds only in a folder no other user can plant a cargo config above: every folder
# from it up to / belongs to root or to you and only they can write into it, or, where others can
# (the sticky /var/tmp and /tmp), it holds a `.cargo` folder of root's (or yours) that they cannot
# write into. An instructor with root makes those once: `install -d -m 755 /var/tmp/.cargo /tmp/.cargo`
# (install.sh and install.sh --shared do it when run as root; moe_lens_guard_tmp below).

# moe_lens_cargo_unsafe DIR: prints why a cargo build in DIR could read a config file another user
# wrote, or nothing when none can. DIR need not exist yet (what is missing is made by you, 0700).
moe_lens_cargo_unsafe() {
  local me mygroup dir a c f
  me=$(id -u)
  mygroup=$(id -un)
  dir=$(realpath -m -- "$1" 2>/dev/null || echo "$1")
  # owned by root or by me, and writable by no one else (group root, or my own user-private group)
  _ml_private() {
    local uid gid mode grp
    read -r uid gid mode < <(stat -L -c '%u %g %a' -- "$1") || return 1
    [ "$uid" = 0 ] || [ "$uid" = "$me" ] || return 1
    grp=$(stat -L -c '%G' -- "$1")
    if (( 8#$mode & 8#020 )) && [ "$gid" != 0 ] && [ "$grp" != "$mygroup" ]; then return 1; fi
    (( 8#$mode & 8#002 )) && return 1
    return 0
  }
  _ml_who() { stat -c 'owner %U, group %G, mode %a' -- "$1" 2>/dev/null || echo "unreadable"; }
  a=$dir
  while :; do
    if [ -d "$a" ]; then
      c=$a/.cargo
      if [ -e "$c" ] || [ -L "$c" ]; then
        if [ -L "$c" ] || [ ! -d "$c" ] || ! _ml_private "$c"; then
          echo "$c ($(_ml_who "$c")) is not a folder only root or you can write, and cargo reads the config.toml in it for every build below $a; remove it (root: rm -r $c; install -d -m 755 $c)"
          return 0
        fi
        for f in "$c/config" "$c/config.toml"; do
          if { [ -e "$f" ] || [ -L "$f" ]; } && ! _ml_private "$f"; then
            echo "$f ($(_ml_who "$f")) can be changed by another user, and cargo reads it for every build below $a; remove it"
            return 0
          fi
        done
      elif ! _ml_private "$a"; then
        echo "another user can write into $a ($(_ml_who "$a")), so they could add $a/.cargo/config.toml, which cargo reads for every build below it (it can name a program cargo runs as you); as root, once: install -d -m 755 $a/.cargo"
        return 0
      fi
    fi
    [ "$a" = / ] && break
    a=$(dirname -- "$a")
  done
  return 0
}

# moe_lens_build_root TAG CANDIDATE...: prints the first candidate folder that no other user can put
# a cargo config above and that is (or is now made) a 0700 folder of yours; says on stderr, after
# TAG, why each one before it was passed over. Prints nothing when none will do. Empty candidates
# are skipped.
moe_lens_build_root() {
  local tag=$1 c why
  shift
  for c in "$@"; do
    [ -n "$c" ] || continue
    why=$(moe_lens_cargo_unsafe "$c")
    if [ -n "$why" ]; then echo "$tag: not building in $c: $why" >&2; continue; fi
    mkdir -p "$c" 2>/dev/null || true
    if [ -d "$c" ] && [ ! -L "$c" ] && [ -O "$c" ]; then
      chmod 700 "$c"
      echo "$c"
      return 0
    fi
    echo "$tag: $c is not a folder of yours; move it away (or set MOE_LENS_BUILD_DIR)" >&2
  done
  return 0
}

# moe_lens_guard_tmp: as root, makes /var/tmp/.cargo and /tmp/.cargo (root's, 0755, empty), so that
# no user can put a cargo config above the students' build folders; says so when one is not safe.
moe_lens_guard_tmp() {
  local b why
  [ "$(id -u)" = 0 ] || return 0
  for b in /var/tmp /tmp; do
    [ -d "$b" ] || continue
    if [ ! -e "$b/.cargo" ] && [ ! -L "$b/.cargo" ]; then
      install -d -m 755 -o root -g root "$b/.cargo" && echo "made $b/.cargo (root's, empty): no user can put a cargo config above the build folders in $b"
    fi
    why=$(moe_lens_cargo_unsafe "$b/x")
    [ -n "$why" ] && echo "WARNING: $why"
  done
  return 0
}
