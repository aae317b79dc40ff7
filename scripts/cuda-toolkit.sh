#!/usr/bin/env bash
# Makes a CUDA toolkit that `cargo build --features cuda` accepts, on a machine without a GPU or a
# system CUDA, and prints the environment to build with:
#
#   eval "$(bash scripts/cuda-toolkit.sh)"      # then: cargo build --features cuda ...
#
# Where it comes from: NVIDIA publishes the CUDA 13 toolkit as PyPI wheels (`cuda-toolkit` with
# extras; the CUDA 12 wheels carry no nvcc). They are installed into a virtual environment and
# their `nvidia/cu13` folder is used as CUDA_HOME. The driver library libcuda.so is in no wheel:
# the linker gets a stand-in made from the names of the driver functions cudarc declares. It is
# never loaded: a CUDA build of lookalike starts only where an NVIDIA driver (580 or newer for
# CUDA 13) provides the real libcuda.so.1.
#
# Choices, as environment variables:
#   CUDA_TOOLKIT      wheel version (default 13.0.3.0). candle compiles its kernels to PTX, which a
#                     driver loads only when it is at least as new as the toolkit: 13.0 loads on
#                     every CUDA 13 driver.
#   CUDA_COMPUTE_CAP  the GPU generation PTX is made for (default 80, Ampere; newer GPUs load it).
#   CUDA_ROOT         where the toolkit goes (default /opt/lookalike-cuda-<major.minor>).
# First run: about 1.2 GB of wheels; then it only prints the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${CUDA_TOOLKIT:-13.0.3.0}
major_minor=$(echo "$version" | cut -d. -f1-2)
root=${CUDA_ROOT:-/opt/lookalike-cuda-$major_minor}
venv=$root/venv
home=$root/home

if [[ ! -x $home/bin/nvcc ]]; then
    echo "installing the CUDA $version toolkit wheels into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==$version" >&2
    cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
    [[ -x $cu/bin/nvcc ]] || { echo "the wheels hold no nvcc at $cu/bin" >&2; exit 1; }
    # The wheels ship versioned libraries only; the linker looks for the plain names.
    for lib in cudart cublas cublasLt nvrtc; do ln -sf "lib$lib.so.13" "$cu/lib/lib$lib.so"; done
    ln -sf libcurand.so.10 "$cu/lib/libcurand.so"
    ln -sfn "$cu" "$home"
fi

stub_dir=$root/driver-stub
if [[ ! -f $stub_dir/libcuda.so ]]; then
    # The driver API functions cudarc links against, from its own bindings.
    cudarc=$(cargo metadata --locked --features cuda --format-version 1 2> /dev/null |
        python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
    bindings=$(dirname "$cudarc")/src/driver/sys/mod.rs
    [[ -f $bindings ]] || { echo "cannot find cudarc's driver bindings at $bindings" >&2; exit 1; }
    mkdir -p "$stub_dir"
    {
        echo "/* Link-time stand-in for libcuda.so.1: every function fails. Never loaded at run time. */"
        sed -nE 's/^[[:space:]]+(pub )?fn (cu[A-Za-z0-9_]+)\(.*/\2/p' "$bindings" | sort -u |
            while read -r name; do echo "int $name(void) { return 999; }"; done
    } > "$stub_dir/libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so" "$stub_dir/libcuda.c"
fi

cuda_version=$(echo "$major_minor" | awk -F. '{ printf "%d%02d0", $1, $2 }')
cat << ENV
export CUDA_HOME=$home CUDA_PATH=$home PATH=$home/bin:\$PATH
export CUDARC_CUDA_VERSION=$cuda_version CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export LIBRARY_PATH=$home/lib:$stub_dir\${LIBRARY_PATH:+:\$LIBRARY_PATH}
ENV
