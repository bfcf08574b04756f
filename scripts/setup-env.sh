#!/usr/bin/env bash
# Create or refresh the project-local environment in .venv (idempotent, fast when up to date).
#
# Order matters:
#   1. torch 2.13.0, CPU build: pip finds it in PIP_FIND_LINKS where the machine provides the
#      wheel; APQ_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) adds an index for it.
#      Installing torch first keeps pip from resolving the multi-GB CUDA build.
#   2. this project with its finn and dev extras, every version pinned by constraints.txt.
#   3. finn-plus 1.6.1 with --no-deps: it pins brevitas==0.13.0, which breaks with torch 2.13;
#      we use brevitas 0.13.4 instead (the override is documented in the README).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python_bin=${PYTHON:-python3}
stamp="$venv/.apq-setup-stamp"
want=$(cat "$root/pyproject.toml" "$root/constraints.txt" "$0" | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "setting up $venv (first use or changed requirements) ..." >&2
if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
torch_index=()
if [ -n "${APQ_TORCH_INDEX:-}" ]; then
    torch_index=(--extra-index-url "$APQ_TORCH_INDEX")
fi
"${pip[@]}" install "${torch_index[@]}" -c "$root/constraints.txt" torch
"${pip[@]}" install -c "$root/constraints.txt" -e "${root}[finn,dev]"
"${pip[@]}" install --no-deps -c "$root/constraints.txt" finn-plus==1.6.1
echo "$want" > "$stamp"
echo "environment ready: $venv" >&2
