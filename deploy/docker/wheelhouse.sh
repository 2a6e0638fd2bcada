#!/usr/bin/env bash
# Download every wheel an image needs into deploy/docker/wheelhouse/ (part of the build
# context), so `docker build --build-arg PIP_NO_INDEX=1` needs no package index. Uses this
# machine's pip configuration (index, proxy, CA); run it with Python 3.11 on linux x86_64,
# the images' platform. Cached: wheels already there are not fetched again.
#   deploy/docker/wheelhouse.sh [serve|serve-gpu|train]      (default serve)
set -euo pipefail
cd "$(dirname "$0")"
WHICH=${1:-serve}
PY=${PYTHON:-python3}
mkdir -p wheelhouse
stamp="wheelhouse/.done-$WHICH"
digest=$(sha256sum "requirements-$WHICH.txt" | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    echo "wheelhouse: up to date for requirements-$WHICH.txt"
    exit 0
fi
# setuptools + wheel: pip builds clipserve itself in an isolated environment from these.
"$PY" -m pip download --quiet --dest wheelhouse --only-binary=:all: \
    --requirement "requirements-$WHICH.txt" "setuptools>=68" wheel
echo "$digest" >"$stamp"
echo "wheelhouse: $(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"
