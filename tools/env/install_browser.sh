#!/usr/bin/env bash
# Headless Chromium for the studio's browser test (tests/test_studio_browser.py), installed only when missing:
# Debian's `chromium` package through apt-get, as root or with password-less sudo. Prints what it did.
# The test drives Chromium over its own DevTools protocol, so no chromedriver is needed.
#   bash tools/env/install_browser.sh        exit 0: Chromium is there; 1: it could not be installed (the test skips)
set -euo pipefail
say() { printf '[install_browser] %s\n' "$*" >&2; }
find_chromium() { command -v chromium || command -v chromium-browser || true; }

found=$(find_chromium)
if [ -n "$found" ]; then
    say "Chromium already installed: $found ($("$found" --version 2>/dev/null | tail -1))"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    say "no apt-get here: install Chromium with this system's package manager (the browser test skips until then)"
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo="sudo"
    else
        say "not root and no password-less sudo: run 'sudo apt-get install chromium' (the browser test skips until then)"
        exit 1
    fi
fi
say "installing Debian's chromium package (about 100 MB with its libraries and fonts)"
t0=$(date +%s)
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
found=$(find_chromium)
if [ -z "$found" ]; then
    say "apt-get finished but no chromium binary is on the PATH"
    exit 1
fi
say "installed $found ($("$found" --version 2>/dev/null | tail -1)) in $(( $(date +%s) - t0 )) s"
