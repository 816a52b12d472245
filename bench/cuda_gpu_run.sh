#!/bin/sh
# Build the CUDA backend standalone with nvcc and run its checks, the
# sanitizers and a few timings on a GPU machine (used through the device tool).
set -u
B=${B:-/tmp/dab}
ARCH=${ARCH:-"-gencode arch=compute_90,code=sm_90"}
mkdir -p "$B"
nvidia-smi --query-gpu=name,driver_version --format=csv
for f in cuda/*.cu; do
  nvcc -c -O3 -std=c++17 $ARCH -Xcompiler -fPIC,-fvisibility=hidden,-fno-threadsafe-statics,-fno-exceptions \
    -Iinclude -Ilib -Icuda "$f" -o "$B/$(basename "$f" .cu).o" &
done
gcc -O2 -std=gnu11 -Iinclude -Ilib -Icuda -I/usr/local/cuda/include -c bench/cuda_check.c -o "$B/check.o"
gcc -O2 -std=gnu11 -Iinclude -Ilib -c lib/hash.c -o "$B/hash.o"
wait
gcc -o "$B/cuda_check" "$B/check.o" "$B/hash.o" "$B"/cuda_*.o /usr/local/cuda/lib64/libcudart_static.a -ldl -lrt -lpthread -lm || exit 1
gcc -shared -o "$B/distrattn_cuda.so" "$B"/cuda_*.o /usr/local/cuda/lib64/libcudart_static.a -ldl -lrt -lpthread -Wl,--exclude-libs,ALL || exit 1
echo "built"
