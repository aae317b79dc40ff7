#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a machine with an NVIDIA GPU, Python and PyTorch but
# no Rust toolchain and no network, into OUT_DIR (under 60 MiB), and prints the command to run
# there:
#
#   bash scripts/gpu-bundle.sh OUT_DIR [--cuda] [--profile release|dev]
#
# OUT_DIR holds:
#   bin/lookalike.xz, bin/embed_bench.xz   stripped, xz-compressed (gpu-check.sh unpacks them
#                                          with xz, or Python's lzma where xz is missing)
#   weights/efficientnet-lite0.safetensors the weights the service loads (19 MB)
#   images/                                8 real images: the two photographs of the test assets
#                                          and 6 Fashion-MNIST test images of different labels
#   catalogue.zip                          50 Fashion-MNIST training images per label, labelled
#   gpu-check.sh gpu_check.py peer_torch.py
#   manifest.json                          the build, the commit, each file's sha256 and the
#                                          shared libraries the binaries need
#
# --cuda         builds the two binaries with `--features cuda` (the toolkit of
#                scripts/cuda-toolkit.sh, target folder $CUDA_TARGET_DIR, default
#                /var/tmp/lookalike-cuda-target; 30+ minutes cold on 2 cores). They run where the
#                NVIDIA driver provides libcuda.so.1 (driver 580+ for CUDA 13) and find cuBLAS,
#                cuRAND and NVRTC (CUDA 13) in PyTorch's wheels, which gpu-check.sh adds to the
#                library path. Without --cuda: the CPU build, for the dry run.
# --profile dev  the test suite's build (no second compile; larger, slower binaries): what the
#                dry run (`gpu-check.sh --device cpu` in the repository) uses. Default release.
# XZ_LEVEL       xz preset (default 9; the dry run uses 0, to pack in seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

# Catalogue images per label, and the limit on the whole bundle.
CATALOGUE_PER_LABEL=50
MAX_BUNDLE_BYTES=$((60 * 1024 * 1024))

out= cuda=false profile=release
while [[ $# -gt 0 ]]; do
    case $1 in
        --cuda) cuda=true ;;
        --profile) profile=${2:?--profile needs release or dev}; shift ;;
        -*) echo "unknown flag $1" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
[[ -n $out ]] || { echo "usage: gpu-bundle.sh OUT_DIR [--cuda] [--profile release|dev]" >&2; exit 2; }
[[ $profile == release || $profile == dev ]] || { echo "--profile is release or dev" >&2; exit 2; }
if [[ -e $out && ! -f $out/manifest.json && -n $(ls -A "$out" 2> /dev/null) ]]; then
    echo "$out exists and is not a bundle; refusing to replace it" >&2
    exit 1
fi
assets=${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# built DIR CARGO_ARGS...: builds, then copies each executable cargo made into DIR at once (the
# target folder is shared: the next build from another checkout overwrites target/*/NAME).
built() {
    local dir=$1
    shift
    mkdir -p "$dir"
    cargo build --locked --quiet --message-format=json "$@" > "$work/build.json"
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and json.loads(line).get("executable"):
        print(json.loads(line)["executable"])
' "$work/build.json" | while read -r exe; do cp "$exe" "$dir/"; done
}

bash scripts/test-assets.sh > /dev/null
echo "== tools that prepare the data (CPU, dev build)"
built "$work/tools" -p lookalike -p lookalike-bench --bin lookalike --bin lookalike-data --bin embed_bench
if $cuda; then
    echo "== lookalike and embed_bench with --features cuda (release)"
    (
        eval "$(bash scripts/cuda-toolkit.sh)"
        export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-/var/tmp/lookalike-cuda-target}
        built "$work/ship" --release --features lookalike/cuda,lookalike-bench/cuda \
            -p lookalike -p lookalike-bench --bin lookalike --bin embed_bench
    )
    build=cuda
elif [[ $profile == release ]]; then
    echo "== lookalike and embed_bench for the CPU (release)"
    built "$work/ship" --release -p lookalike -p lookalike-bench --bin lookalike --bin embed_bench
    build=cpu
else
    mkdir -p "$work/ship"
    cp "$work/tools/lookalike" "$work/tools/embed_bench" "$work/ship/"
    build=cpu
fi

rm -rf "$out"
mkdir -p "$out/bin" "$out/weights" "$out/images"
echo "== binaries: strip, xz -${XZ_LEVEL:-9}"
for exe in lookalike embed_bench; do
    strip -o "$work/$exe" "$work/ship/$exe"
    xz "-${XZ_LEVEL:-9}" -T0 -c "$work/$exe" > "$out/bin/$exe.xz"
    readelf -d "$work/$exe" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p' > "$work/$exe.needed"
done

echo "== weights, images, catalogue"
"$work/tools/lookalike" import-weights "$assets/efficientnet-lite0-57934424.pth" \
    "$out/weights/efficientnet-lite0.safetensors" > /dev/null
cp "$assets/flower.jpg" "$assets/china.jpg" "$out/images/"
"$work/tools/lookalike-data" fashion-mnist --out "$work/fmnist" --catalogue-per-label "$CATALOGUE_PER_LABEL" \
    --queries-per-label 1 > /dev/null
cp "$work/fmnist/catalogue.zip" "$out/"
# One test image of each of the first 6 labels (in name order): with the 2 photographs, 8.
labels=("$work/fmnist/queries"/*/)
for dir in "${labels[@]:0:6}"; do
    files=("$dir"*.png)
    cp "${files[0]}" "$out/images/fmnist-$(basename "$dir").png"
done
cp scripts/gpu-check.sh scripts/gpu_check.py bench/embed/peer_torch.py "$out/"

commit=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- . 2> /dev/null || commit="$commit+uncommitted"
python3 - "$out" "$build" "$profile" "$commit" "$work" <<'PY'
import hashlib, json, os, sys, time
out, build, profile, commit, work = sys.argv[1:]
files = {}
for root, _, names in os.walk(out):
    for name in sorted(names):
        path = os.path.join(root, name)
        files[os.path.relpath(path, out)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
manifest = {"build": build, "profile": profile, "commit": commit,
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "needs": {exe: open(os.path.join(work, exe + ".needed")).read().split()
                      for exe in ("lookalike", "embed_bench")},
            "files": dict(sorted(files.items()))}
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=2)
PY

bytes=$(du -sb "$out" | cut -f1)
echo "bundle: $out, $((bytes / 1024 / 1024)) MiB ($build build, $profile, commit $commit)"
if ((bytes > MAX_BUNDLE_BYTES)); then
    echo "the bundle is over $((MAX_BUNDLE_BYTES / 1024 / 1024)) MiB" >&2
    exit 1
fi
device=cpu
if $cuda; then device=cuda; fi
echo "run it there:  bash $out/gpu-check.sh --device $device --out gpu-check.json"
