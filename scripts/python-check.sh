#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The Python package's tests (python/tests) against the library built in a
# build tree (default build/): a virtual environment BUILD/python-venv
# (DISTRATTN_PY_VENV to put it elsewhere), `pip install ./python` with
# numpy, ml_dtypes and pytest, then pytest, run outside the source tree so
# that the installed package is the one tested, with
# DISTRATTN_LIB=BUILD/lib/.libs/libdistrattn.so and
# DISTRATTN_BACKEND_PATH=BUILD/cl/.libs:BUILD/cuda/.libs.
#
#   scripts/python-check.sh [BUILD] [PYTEST ARGS...]
#
# DISTRATTN_PY_TORCH: 1 installs torch from PyPI (about 5 GB with its CUDA
# libraries; 2-3 minutes with a cold pip cache) and makes the torch tests
# required (DISTRATTN_REQUIRE_TORCH=1); 0 runs without torch (its tests
# skip); unset: torch's tests run if the environment already has torch.
# DISTRATTN_REQUIRE_BACKENDS (cpu,opencl in CI) makes a missing backend's
# tests fail instead of skip, as in `make check`.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
build=$(cd "$build" && pwd)
lib=$build/lib/.libs/libdistrattn.so
if [ ! -f "$lib" ]; then
  echo "python-check: $lib not found: build the library first (README.md)" >&2
  exit 1
fi
venv=${DISTRATTN_PY_VENV:-$build/python-venv}
py=${PYTHON:-python3}
t0=$(date +%s)
say() { echo "python-check: $* ($(( $(date +%s) - t0 )) s)"; }

if [ ! -x "$venv/bin/python" ]; then
  say "making the virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy=$venv/bin/python
pipq() { "$vpy" -m pip install -q --disable-pip-version-check "$@"; }
pipq numpy pytest ml_dtypes
# the package as a user installs it (again each run: python/ may have changed)
pipq --force-reinstall --no-deps "$top/python"
case ${DISTRATTN_PY_TORCH:-} in
  1)
    if ! "$vpy" -c 'import torch' 2>/dev/null; then
      say "installing torch from PyPI"
      pipq torch
    fi
    export DISTRATTN_REQUIRE_TORCH=1 ;;
  0) "$vpy" -m pip uninstall -q -y torch >/dev/null 2>&1 || true ;;
esac
say "$("$vpy" -c 'import numpy, sys; print("python", sys.version.split()[0], "numpy", numpy.__version__)')$("$vpy" -c 'import torch; print(", torch", torch.__version__)' 2>/dev/null || echo ', no torch')"

export DISTRATTN_LIB=$lib
export DISTRATTN_BACKEND_PATH=$build/cl/.libs:$build/cuda/.libs
# torch.compile's caches in a fresh folder of the build, not the user's
# /tmp/torchinductor_$USER: code compiled there by another checkout calls
# our ops with that checkout's schema
export TORCHINDUCTOR_CACHE_DIR=$build/python-check-inductor
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
cd "$build"
"$vpy" -c 'import distrattn, sys; sys.exit(0 if "site-packages" in distrattn.__file__ else "python-check: not the installed package: " + distrattn.__file__)'
set +e
"$vpy" -m pytest -p no:cacheprovider -q -rfEs "$top/python/tests" "$@"
rc=$?
set -e
say "pytest exit $rc"
exit $rc
