#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with the tested versions pinned in
# constraints.txt, and install fabench into it (editable, with the test extras).
# Usage: bash scripts/install.sh        (FABENCH_PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${FABENCH_PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
if [ ! -x .venv/bin/python ]; then
  echo "fabench install: creating .venv with $($py --version 2>&1)" >&2
  "$py" -m venv .venv
fi
stamp=".venv/.fabench-installed"
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import fabench, torch, foolbox" 2>/dev/null; then
  echo "fabench install: .venv is up to date" >&2
  exit 0
fi
echo "fabench install: installing pinned dependencies (torch from local disk; about 2 minutes)" >&2
log=".venv/install.log"
if ! .venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e '.[test]' >"$log" 2>&1; then
  grep -v "^WARNING: Location 'file:" "$log" | tail -n 30 >&2
  echo "fabench install: pip failed (full log: $root/$log)" >&2
  exit 1
fi
.venv/bin/python -c "import fabench, torch, foolbox"
echo "$want" > "$stamp"
echo "fabench install: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
