#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.lock for the GPU machine (CPython 3.12, manylinux
# x86_64) into benchmarks/gpu/wheels/ (git-ignored; carried to the machine with the device tool's
# `carry`). Runs on this CPU machine, which can reach the package index; the GPU machine cannot.
#
# Usage: bash benchmarks/gpu/download_wheels.sh [DEST]      (needs a pip: $PIP, else .venv's, else python3's)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DEST="${1:-$HERE/wheels}"
if [ -n "${PIP:-}" ]; then read -r -a pip <<<"$PIP"
elif [ -x "$REPO/.venv/bin/python" ]; then pip=("$REPO/.venv/bin/python" -m pip)
else pip=(python3 -m pip); fi
mkdir -p "$DEST"
mapfile -t pins < <(grep -Ev '^\s*(#|$)' "$HERE/wheels.lock")
# Pure-Python wheels are py3-none-any; pydantic-core is a compiled manylinux wheel, whose tag pip
# matches exactly, hence the list of manylinux platforms.
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${pins[@]}"
# One wheel per pin, and nothing else: two versions of a package stop `pip install --no-index`.
for pin in "${pins[@]}"; do
  name="${pin%%==*}"; version="${pin##*==}"
  stem="$(echo "$name" | tr '-' '_')"
  n=$(find "$DEST" -maxdepth 1 -iname "${stem}-*.whl" | wc -l)
  found=$(find "$DEST" -maxdepth 1 -iname "${stem}-${version}-*.whl" | wc -l)
  if [ "$n" -ne 1 ] || [ "$found" -ne 1 ]; then
    echo "error: $DEST should hold exactly one wheel of $pin (found $n wheel(s) of $name); empty it and rerun" >&2
    exit 1
  fi
done
echo "wheels in $DEST: $(find "$DEST" -maxdepth 1 -name '*.whl' | wc -l), $(du -cb "$DEST"/*.whl | tail -1 | cut -f1) bytes"
