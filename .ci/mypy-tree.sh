#!/usr/bin/env bash
# mypy cannot follow the editable install's import hook, so check a tree of links laid out
# as the installed package is: build/typecheck/schoolgate/{policy,dns,...} -> the real folders.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
rm -rf "$tree" && mkdir -p "$tree/schoolgate"
for f in "$root"/src/schoolgate/*.py; do ln -s "$f" "$tree/schoolgate/"; done
for area in policy store identity dns proxy gateway lab console services scheduler lists selftest review; do
  [ -d "$root/$area" ] && ln -s "$root/$area" "$tree/schoolgate/$area"
done
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/build/mypy-cache" -p schoolgate "$@"
