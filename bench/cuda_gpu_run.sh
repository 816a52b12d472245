#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Build the CUDA backend standalone with nvcc and run its checks, the
# sanitizers and a few timings on a GPU machine (used through the device tool).
# The Hopper kernel (cuda/cuda_wgmma.cu) is built for sm_90a alone.
set -u
B=${B:-/tmp/dab}
ARCH=${ARCH:-"-gencode arch=compute_90,code=sm_90"}
WGARCH=${WGARCH:-"-gencode arch=compute_90a,code=sm_90a -DDAC_HAVE_SM90A"}
mkdir -p "$B"
nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null || true
FLAGS="-O3 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden,-fno-threadsafe-statics,-fno-exceptions -Iinclude -Ilib -Icuda"
for f in cuda/*.cu; do
  case $f in
    */cuda_wgmma.cu) nvcc -c $FLAGS $WGARCH "$f" -o "$B/$(basename "$f" .cu).o" & ;;
    *) nvcc -c $FLAGS $ARCH "$f" -o "$B/$(basename "$f" .cu).o" & ;;
  esac
done
gcc -O2 -std=gnu11 -Iinclude -Ilib -Icuda -I/usr/local/cuda/include -c bench/cuda_check.c -o "$B/check.o"
gcc -O2 -std=gnu11 -Iinclude -Ilib -c lib/hash.c -o "$B/hash.o"
wait
gcc -o "$B/cuda_check" "$B/check.o" "$B/hash.o" "$B"/cuda_*.o /usr/local/cuda/lib64/libcudart_static.a -ldl -lrt -lpthread -lm || exit 1
gcc -shared -o "$B/distrattn_cuda.so" "$B"/cuda_*.o /usr/local/cuda/lib64/libcudart_static.a -ldl -lrt -lpthread -Wl,--exclude-libs,ALL || exit 1
echo "built"
