#!/usr/bin/env bash
# Writes requirements/lock.txt: every package of `.[dev,cluster]` (export included) pinned
# for Python 3.11 on linux x86_64, resolved against the CPU build of torch (which needs no
# nvidia-* packages). Pins already in the lock are kept where they still fit; pass
# --upgrade (or --upgrade-package NAME) to move them. Needs `uv` (pip install uv).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=2.13.0
python_version=3.11   # the cluster image's Python (cluster.yaml); tests/tune/test_cluster_yaml.py reads it
# The CPU wheel: from a local wheel folder where there is one, else PyTorch's CPU index.
if compgen -G "${TORCH_CPU_WHEELS:-/opt/wheels}/torch-${torch_version}+cpu-*.whl" >/dev/null; then
    torch_source=(--find-links "${TORCH_CPU_WHEELS:-/opt/wheels}")
else
    torch_source=(--torch-backend cpu)
fi
uv pip compile pyproject.toml --extra dev --extra cluster \
    --python-version "${python_version}" --python-platform x86_64-manylinux_2_28 \
    "${torch_source[@]}" --index-strategy first-index \
    --constraints <(echo "torch==${torch_version}+cpu") \
    --custom-compile-command "bash requirements/lock.sh  # python ${python_version}, linux x86_64, torch ${torch_version} (any build)" \
    --output-file requirements/lock.txt "$@"
# Pin torch without the local label, so the CPU, CUDA and MPS builds of 2.13.0 all satisfy it.
sed -i "s/^torch==${torch_version}+cpu$/torch==${torch_version}/" requirements/lock.txt
if grep -qiE '^(nvidia-|triton|cuda-)' requirements/lock.txt; then
    echo "requirements/lock.txt pulls a CUDA package; resolve against the CPU torch" >&2
    exit 1
fi
