#!/usr/bin/env bash
# lookalike's GPU check (issue 10): on a machine with an NVIDIA GPU, from a bundle made by
# scripts/gpu-bundle.sh (prebuilt binaries, weights, images, a catalogue; no Rust, no network):
#
#   bash BUNDLE/gpu-check.sh [--device cuda|cuda:N|cpu] [--bundle DIR] [--out FILE]
#
# checks (a) the features of 8 real images on the device against the CPU's and PyTorch's, (b) a
# finetune job through the real server on the device against the same job on the CPU, and
# measures (c) embedding images/s at 224 px, batches 1, 32 and 128, lookalike against PyTorch
# on the same device, weights and pixels. scripts/gpu_check.py does the work and says what
# each check allows; a 450 s deadline (profile "gpu") is meant to keep it within an 8-minute run; it has not run on a GPU yet. It writes one JSON report (--out,
# default ./gpu-check-DEVICE.json; the servers' logs beside it) and prints a table; any check
# that does not hold makes it exit 1.
#
# --device cpu is the dry run: the same steps on the CPU with smaller sizes (64 px input, batches
# 1, 8 and 32; a minute or two on 2 cores). Run from the repository without --bundle, it first
# makes a CPU bundle from the test suite's build (scripts/gpu-bundle.sh --profile dev) in
# $GPU_CHECK_BUNDLE (default bench/out/gpu-bundle-dry, ignored by git, one per checkout).
#
# Needs Python 3 with numpy and PyTorch ($PYTHON, else the first python3 that has them); for
# CUDA, the driver's libcuda.so.1, and cuBLAS, cuRAND and NVRTC of CUDA 13, which are taken
# from PyTorch's own NVIDIA wheels.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
device=cuda bundle= out=
while [[ $# -gt 0 ]]; do
    case $1 in
        --device) device=${2:?--device needs cuda, cuda:N or cpu}; shift ;;
        --bundle) bundle=${2:?--bundle needs a folder}; shift ;;
        --out) out=${2:?--out needs a file}; shift ;;
        *) echo "usage: gpu-check.sh [--device cuda|cuda:N|cpu] [--bundle DIR] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done
case $device in cpu | cuda | cuda:[0-9]*) ;; *) echo "--device is cuda, cuda:N or cpu, not $device" >&2; exit 2 ;; esac
start=$SECONDS

if [[ -z $bundle ]]; then
    if [[ -f $here/manifest.json ]]; then
        bundle=$here
    elif [[ $device == cpu && -f $here/gpu-bundle.sh ]]; then
        bundle=${GPU_CHECK_BUNDLE:-$here/../bench/out/gpu-bundle-dry}
        echo "== dry run: a CPU bundle from the test suite's build in $bundle"
        XZ_LEVEL=0 bash "$here/gpu-bundle.sh" "$bundle" --profile dev
    else
        echo "no bundle: make one with 'bash scripts/gpu-bundle.sh DIR --cuda' and pass --bundle DIR" >&2
        exit 2
    fi
fi
bundle=$(cd "$bundle" && pwd)
out=$(realpath -m "${out:-gpu-check-${device/:/}.json}")

python=${PYTHON:-}
if [[ -z $python ]]; then
    for candidate in python3 /usr/bin/python3 python; do
        if command -v "$candidate" > /dev/null && "$candidate" -c "import numpy, torch" 2> /dev/null; then
            python=$candidate
            break
        fi
    done
fi
[[ -n $python ]] || { echo "no Python with numpy and PyTorch found; set PYTHON" >&2; exit 1; }

build=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["build"])' "$bundle/manifest.json")
if [[ $device != cpu && $build != cuda ]]; then
    echo "the bundle in $bundle is a $build build; --device $device needs one made with gpu-bundle.sh --cuda" >&2
    exit 1
fi

echo "== unpacking the binaries; checking the bundle's files against manifest.json"
bin=$(mktemp -d "${TMPDIR:-/tmp}/lookalike-gpu-check-bin.XXXXXX")
trap 'rm -rf "$bin"' EXIT
"$python" - "$bundle" "$bin" <<'PY'
import hashlib, json, lzma, os, sys
bundle, bin_dir = sys.argv[1:]
manifest = json.load(open(os.path.join(bundle, "manifest.json")))
for name, digest in manifest["files"].items():
    if hashlib.sha256(open(os.path.join(bundle, name), "rb").read()).hexdigest() != digest:
        sys.exit(f"{name} does not match manifest.json: the bundle is damaged")
for exe in ("lookalike", "embed_bench"):
    path = os.path.join(bin_dir, exe)
    with lzma.open(os.path.join(bundle, "bin", exe + ".xz")) as packed, open(path, "wb") as f:
        f.write(packed.read())
    os.chmod(path, 0o755)
print(f"bundle: {manifest['build']} build ({manifest['profile']}), commit {manifest['commit']}, "
      f"made {manifest['made_at']}")
PY

if [[ $build == cuda ]]; then
    # cuBLAS, cuRAND and NVRTC: the folders of PyTorch's NVIDIA wheels (nvidia/cu13/lib, or one
    # nvidia/<library>/lib each in older layouts), then torch/lib, then the environment's lib
    # (conda).
    libs=$("$python" - <<'PY'
import glob, os, sys
dirs = []
try:
    import nvidia
    for root in nvidia.__path__:
        dirs += sorted(d for d in glob.glob(os.path.join(root, "**", "lib"), recursive=True) if os.path.isdir(d))
except ImportError:
    pass
import torch
dirs += [os.path.join(os.path.dirname(torch.__file__), "lib"), os.path.join(sys.prefix, "lib")]
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
    )
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if command -v ldd > /dev/null; then
    missing=$(ldd "$bin/lookalike" "$bin/embed_bench" | awk '/not found/ { print $1 }' | sort -u)
    if [[ -n $missing ]]; then
        echo "the binaries need libraries this machine lacks: $(echo $missing)" >&2
        echo "(libcuda.so.1 comes with the NVIDIA driver; the CUDA 13 libraries with PyTorch's wheels)" >&2
        exit 1
    fi
fi
if [[ $device != cpu ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi

status=0
"$python" "$bundle/gpu_check.py" --device "$device" --bundle "$bundle" --bin "$bin" --out "$out" || status=$?
echo "gpu-check.sh: $((SECONDS - start)) s wall in all"
exit "$status"
