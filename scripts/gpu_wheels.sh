#!/usr/bin/env bash
# Fill .gpu-wheels/ (git-ignored) with what scripts/gpu_check.sh installs on the GPU machine,
# which reaches no package registry and runs CPython 3.12 on x86-64 Linux with torch and triton:
#   - every dependency of the project (the whole closure, pinned to the versions installed in
#     this checkout's environment, which the test suite passes with), as CPython 3.12
#     manylinux x86_64 wheels, less numpy and pandas (the machine has them; they are large);
#   - flash-attn-res, for the kernel benchmark's comparison, when the registry has a wheel.
# The folder travels with the working tree, which may hold 64 MiB in all: the script measures
# both and fails when they do not fit.
# Usage: scripts/gpu_wheels.sh [DEST]    (default .gpu-wheels; $PYTHON picks the environment,
#        $TARGET_PYTHON the target's Python version, 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
dest=${1:-.gpu-wheels}
flash_attn_res=${FLASH_ATTN_RES:-flash-attn-res==0.1.12}
limit_mib=64
[ -x "$py" ] || { echo "error: no Python at $py; run scripts/setup.sh dev or set PYTHON" >&2; exit 2; }

# name==version of each dependency in the closure, as this environment has it installed.
pins=$("$py" - <<'EOF'
import importlib.metadata as md
import re
import tomllib

from packaging.requirements import Requirement

LEFT_OUT = {"numpy", "pandas"}  # on the GPU machine already, and 16 + 12 MB as wheels
with open("pyproject.toml", "rb") as f:
    todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
pins = {}
while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in pins or name in LEFT_OUT:
        continue
    dist = md.distribution(req.name)
    pins[name] = dist.version
    for dep in map(Requirement, dist.requires or []):
        if dep.marker is None or dep.marker.evaluate({"extra": ""}):
            todo.append(dep)
print(" ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
EOF
)

platform=(--only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
rm -rf "$dest"
mkdir -p "$dest"
# shellcheck disable=SC2086  # one word per pin
quiet() { grep -v "^WARNING: Location 'file:" >&2 || true; }  # this machine's pip.conf notes
"$py" -m pip download -q --no-deps "${platform[@]}" -d "$dest" $pins 2> >(quiet)
if "$py" -m pip download -q --no-deps "${platform[@]}" -d "$dest" "$flash_attn_res" 2>/dev/null; then
  far_note="$flash_attn_res carried"
else
  far_note="$flash_attn_res: no wheel for CPython ${TARGET_PYTHON:-3.12} manylinux x86_64 on the registry; not carried"
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheels=$(du -sb "$dest" | cut -f1)
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
        | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 )
total=$((wheels + tree))
echo "$(ls "$dest" | wc -l) wheels in $dest: $(mib "$wheels") MiB; $far_note"
echo "with the working tree that travels ($(mib "$tree") MiB): $(mib "$total") MiB of $limit_mib MiB"
if [ "$total" -gt $((limit_mib * 1048576)) ]; then
  echo "error: $(mib "$total") MiB exceeds the $limit_mib MiB the GPU machine takes; carry fewer wheels" >&2
  exit 1
fi
