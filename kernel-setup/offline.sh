# install.sh --from BUNDLE (a tar from kernel-setup/bundle.sh, or its unpacked moe-lens-bundle
# folder): sourced, not run, by install.sh and shared-install.sh.
#
#   bundle_open FROM STAGE REPO   unpacks FROM into STAGE (a tar) or uses it as it is (a folder),
#                                 checks every file against SHA256SUMS (and the tar against
#                                 FROM.sha256 when that is next to it), and that REPO is the
#                                 moe-lens the bundle was made from (its Cargo.lock); sets `bundle`
#                                 (the moe-lens-bundle folder) and the MANIFEST's MOE_LENS_BUNDLE_*
#   bundle_cargo_config VENDOR    prints the cargo --config arguments that take every crate from
#                                 VENDOR and never the network
#   bundle_cargo_home DIR VENDOR  writes DIR/config.toml with the same settings (a CARGO_HOME for
#                                 the kernel's own cargo runs), and cargo's state files there, 0600
#   bundle_check_rustc            warns when this rustc is not the bundle's (the toolchain's library
#                                 crates were vendored for the bundle's)

bundle_open() {
  local from=$1 stage=$2 repo=$3
  if [ -d "$from" ]; then
    bundle=$(cd "$from" && pwd)
    [ -f "$bundle/MANIFEST" ] || { [ -f "$bundle/moe-lens-bundle/MANIFEST" ] && bundle=$bundle/moe-lens-bundle; }
  elif [ -f "$from" ]; then
    if [ -f "$from.sha256" ]; then
      echo "    checking $(basename "$from") against $(basename "$from").sha256"
      [ "$(sha256sum "$from" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$from.sha256")" ] \
        || { echo "    $from does not match $from.sha256: copy it again" >&2; return 1; }
    fi
    rm -rf "$stage"; mkdir -p "$stage"
    echo "    unpacking $from into $stage"
    tar -xf "$from" -C "$stage" --no-same-owner --no-same-permissions
    bundle=$stage/moe-lens-bundle
  else
    echo "    --from $from: no such file or folder" >&2; return 1
  fi
  [ -f "$bundle/MANIFEST" ] && [ -f "$bundle/SHA256SUMS" ] \
    || { echo "    $from is not a moe-lens bundle (no moe-lens-bundle/MANIFEST and SHA256SUMS): make it with kernel-setup/bundle.sh" >&2; return 1; }
  echo "    checking the sums of $(wc -l < "$bundle/SHA256SUMS") files"
  if ! (cd "$bundle" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1); then
    (cd "$bundle" && sha256sum --quiet -c SHA256SUMS 2>&1 | head -5) >&2 || true
    echo "    the bundle is damaged (the files above differ from SHA256SUMS): copy it again, or make it again with bundle.sh" >&2
    return 1
  fi
  # the manifest is plain NAME=value lines (and comments); read only the names we know
  local line re='^(MOE_LENS_BUNDLE_[A-Z_]+)=(.*)$'
  while IFS= read -r line; do
    if [[ $line =~ $re ]]; then printf -v "${BASH_REMATCH[1]}" '%s' "${BASH_REMATCH[2]//\"/}"; fi
  done < "$bundle/MANIFEST"
  [ "${MOE_LENS_BUNDLE_VERSION:-}" = 1 ] || { echo "    bundle format ${MOE_LENS_BUNDLE_VERSION:-?} unknown to this install.sh" >&2; return 1; }
  local lock; lock=$(sha256sum "$repo/Cargo.lock" | cut -d' ' -f1)
  if [ "$lock" != "$MOE_LENS_BUNDLE_CARGO_LOCK" ]; then
    echo "    $repo is another version of moe-lens than the bundle's ($MOE_LENS_BUNDLE_COMMIT: its Cargo.lock differs):" >&2
    echo "    run the bundle's own copy: $bundle/src/kernel-setup/install.sh --from $from" >&2
    return 1
  fi
  echo "    bundle of moe-lens $MOE_LENS_BUNDLE_COMMIT: $MOE_LENS_BUNDLE_CRATES crates, evcxr_jupyter $MOE_LENS_BUNDLE_EVCXR, wheels for $MOE_LENS_BUNDLE_PYTHON, Rust $MOE_LENS_BUNDLE_RUSTC$([ "$MOE_LENS_BUNDLE_WITH_RUST" = 1 ] && echo " (included)")"
}

bundle_cargo_config() {
  printf '%s\n' --config 'source.crates-io.replace-with="moe-lens-vendor"' \
    --config "source.moe-lens-vendor.directory=\"$1\"" --config 'net.offline=true'
}

bundle_cargo_home() {
  mkdir -p "$1"
  printf '[source.crates-io]\nreplace-with = "moe-lens-vendor"\n\n[source.moe-lens-vendor]\ndirectory = "%s"\n\n[net]\noffline = true\n' \
    "$2" > "$1/config.toml"
  # cargo's own state files there (its lock files, its cache database), made now and 0600: else
  # cargo makes them at the kernel's first build with the user's umask, readable by others
  local f
  for f in .package-cache .package-cache-mutate .global-cache; do
    [ -e "$1/$f" ] || : > "$1/$f"
    chmod 600 "$1/$f"
  done
}

bundle_check_rustc() {
  local v; v=$(rustc -vV | sed -n 's/^release: //p')
  if [ "$v" != "$MOE_LENS_BUNDLE_RUSTC" ]; then
    echo "    WARNING: rustc $v here, the bundle was made with $MOE_LENS_BUNDLE_RUSTC: the crates of the toolchain's"
    echo "             library (evcxr's type inference) may be missing offline, so cells like 'let x = …;' may fail;"
    echo "             make the bundle with --with-rust, or install Rust $MOE_LENS_BUNDLE_RUSTC here"
  fi
  local host; host=$(rustc -vV | sed -n 's/^host: //p')
  if [ "$host" != "$MOE_LENS_BUNDLE_HOST" ]; then
    echo "    this machine is $host, the bundle was made on $MOE_LENS_BUNDLE_HOST: make it on a machine like this one" >&2
    return 1
  fi
}

# the bundle's wheels are for one Python version and platform: say so plainly when they do not fit
bundle_check_python() {
  local py=$1 tag
  tag=$("$py" -c 'import sys, sysconfig; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]} {sysconfig.get_platform()}")') || return 1
  if [ "$tag" != "$MOE_LENS_BUNDLE_PYTHON" ]; then
    echo "    $py is $tag; the bundle's wheels are for $MOE_LENS_BUNDLE_PYTHON: set PYTHON to such a Python here," >&2
    echo "    or make the bundle with PYTHON=/path/to/python${MOE_LENS_BUNDLE_PYTHON#cpython} (the version this server has)" >&2
    return 1
  fi
  local full; full=$("$py" -c 'import platform; print(platform.python_version())')
  if [ -n "${MOE_LENS_BUNDLE_PYTHON_FULL:-}" ] && [ "$full" != "$MOE_LENS_BUNDLE_PYTHON_FULL" ]; then
    echo "    note: $py is Python $full, the wheels were downloaded for $MOE_LENS_BUNDLE_PYTHON_FULL; if pip refuses one"
    echo "    (\"requires a different Python\"), make the bundle with PYTHON set to a Python $full"
  fi
}
