# SPDX-License-Identifier: Apache-2.0
# Sourced: installs the Debian packages the build needs when they are missing.
da_pkgs="autoconf automake libtool pkg-config make gcc libcmocka-dev ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libclblast-dev clinfo"
da_missing=""
for p in $da_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || da_missing="$da_missing $p"; done
if [ -n "$da_missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing:$da_missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $da_missing >/dev/null
fi
