# shellcheck shell=bash
# Sourced by the shared install (shared-install.sh, which records) and the shared kernel
# (shared-kernel.sh, which applies): the environment variables that the build scripts of the
# notebooks' crates watch, kept the same for the instructor's warm build and every student's kernel.
#
# Why: cargo runs a build script again when a variable it watches (`rerun-if-env-changed`) differs
# from the build's, and then compiles again everything that depends on that crate. ring's build
# script compiles C through the cc crate, which watches CC, CFLAGS and their kin; on a GPU machine
# the instructor's environment had CC=/opt/gcc/bin/gcc and the students' none, so every student's
# first `:dep` cell compiled ring, rustls, hf-hub and moe-lens again (seen on an H200, 2026-12-02).
# `module load gcc` does the same on a cluster. The CUDA variables are kept alike the same way
# (MOE_LENS_SHARED_CUDA_ENV_*, shared-install.sh).

# moe_lens_build_env_var NAME: true for a variable the kernels keep alike: the C and C++ compilers'
# settings as the cc crate reads them (also HOST_, TARGET_ and per-target forms, e.g.
# CC_x86_64_unknown_linux_gnu), and the other variables the notebooks' crates' build scripts watch.
moe_lens_build_env_var() {
  case $1 in
    CC|CXX|AR|RANLIB|CFLAGS|CXXFLAGS|CPPFLAGS|ARFLAGS|CRATE_CC_NO_DEFAULTS) return 0 ;;
    CC_*|CXX_*|AR_*|RANLIB_*|CFLAGS_*|CXXFLAGS_*|ARFLAGS_*) return 0 ;;
    HOST_CC|HOST_CXX|HOST_AR|HOST_CFLAGS|HOST_CXXFLAGS|HOST_ARFLAGS|HOST_RANLIB) return 0 ;;
    TARGET_CC|TARGET_CXX|TARGET_AR|TARGET_CFLAGS|TARGET_CXXFLAGS|TARGET_ARFLAGS|TARGET_RANLIB) return 0 ;;
    RUSTC_BOOTSTRAP|ICU4X_DATA_DIR|LIBC_BUILD_VERBOSE|RUST_LIBC_UNSTABLE_*) return 0 ;;
  esac
  return 1
}

# moe_lens_build_env_record: the lines for moe-lens-shared.env: a marker, then each such variable
# of this environment (the instructor's) with its value
moe_lens_build_env_record() {
  local v
  echo "MOE_LENS_SHARED_BUILD_ENV=1"
  for v in $(compgen -e); do
    if moe_lens_build_env_var "$v"; then printf 'MOE_LENS_SHARED_BUILD_ENV_%s=%q\n' "$v" "${!v}"; fi
  done
}

# moe_lens_build_env_apply (after sourcing moe-lens-shared.env): unsets every such variable of this
# environment (the user's), then exports the recorded ones. An install made before the recording
# (no marker) is left as it was.
moe_lens_build_env_apply() {
  local v r
  [ "${MOE_LENS_SHARED_BUILD_ENV:-0}" = 1 ] || return 0
  for v in $(compgen -e); do
    if moe_lens_build_env_var "$v"; then unset "$v"; fi
  done
  for r in $(compgen -v MOE_LENS_SHARED_BUILD_ENV_); do
    export "${r#MOE_LENS_SHARED_BUILD_ENV_}=${!r}"
  done
}
