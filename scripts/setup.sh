#!/usr/bin/env bash
# Create .venv (if missing) and install lookalike with every optional extra and the pinned torch/torchvision.
# Idempotent: a second run only re-checks the installed versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# (this machine's pip config names local indexes that do not hold every package: that noise is filtered out)
log=$(mktemp)
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all,dev]" >"$log" 2>&1; then
    grep -v -E "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
    echo "setup: pip install failed (see the messages above)" >&2
    exit 1
fi
grep -v -E "is ignored: it is neither a file nor a directory" "$log" || true
rm -f "$log"
# The browser test (tests/serve/test_browser.py) drives the system's Chromium: Playwright cannot download browsers.
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's chromium for the browser test (apt-get)"
        { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
            || echo "setup: apt-get install chromium failed; the browser test will fail where CI is set" >&2
    else
        echo "setup: no /usr/bin/chromium (as root: apt-get install chromium); the browser test is skipped unless CI is set"
    fi
fi
.venv/bin/python -c "import torch, torchvision, lookalike; print(f'lookalike {lookalike.__version__} ready (torch {torch.__version__}, torchvision {torchvision.__version__})')"
