#!/usr/bin/env bash
# docs/install.md followed on a new Django project in a clean virtualenv (see fresh_install.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
exec "$PYTHON" tests/fresh_install/fresh_install.py "$@"
