#!/usr/bin/env bash
# Re-resolve the pinned requirements of the images with pip's resolver (run with the Python
# the images use, 3.11): deploy/docker/requirements-{serve,serve-gpu,train}.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install --dry-run --ignore-installed --quiet --report "$tmp/serve.json" .
"$PY" -m pip install --dry-run --ignore-installed --quiet --report "$tmp/train.json" '.[train]'
"$PY" -m pip install --dry-run --ignore-installed --quiet --report "$tmp/gpu.json" '.[gpu]'
"$PY" - "$tmp" <<'PYEOF'
import json, sys
tmp = sys.argv[1]
head = ("# Pinned dependencies of the {what} image ({cmd}), resolved for CPython 3.11 on\n"
        "# linux x86_64. The image installs exactly these, then clipserve itself with --no-deps.\n"
        "# Regenerate: deploy/docker/pin.sh (pip's resolver, `pip install --dry-run --report`).\n")
def pins(name, drop=("clipserve",)):
    r = json.load(open(f"{tmp}/{name}.json"))
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in r["install"] if i["metadata"]["name"] not in drop}
def write(path, what, cmd, p):
    with open(path, "w") as f:
        f.write(head.format(what=what, cmd=cmd))
        f.writelines(f"{n}=={v}\n" for n, v in sorted(p.items(), key=lambda t: t[0].lower()))
write("deploy/docker/requirements-serve.txt", "CPU serving", "pip install ., no torch", pins("serve"))
write("deploy/docker/requirements-train.txt", "training", "pip install .[train]", pins("train"))
gpu = pins("gpu", drop=("clipserve", "onnxruntime"))  # onnxruntime-gpu provides the module
write("deploy/docker/requirements-serve-gpu.txt", "CUDA serving",
      "pip install .[gpu] with onnxruntime-gpu in place of onnxruntime", gpu)
PYEOF
echo "pinned: deploy/docker/requirements-*.txt"
