#!/usr/bin/env bash
# Make Debian's chromium available at /usr/bin/chromium for the browser tests (driven by the
# Python `playwright` package with executable_path=/usr/bin/chromium: Playwright's own browser
# download does not work on these machines). Installs from the machine's apt sources as they
# are, with a fonts package so screenshots render text. Always exits 0: when chromium cannot be
# installed, a warning is printed and the browser tests skip (and fail under CI=true).
set -uo pipefail

chromium_bin=/usr/bin/chromium

if [ ! -x "$chromium_bin" ]; then
  echo "installing chromium (Debian package) and fonts"
  if [ "$(id -u)" != 0 ]; then
    echo "warning: not root, cannot apt-get install chromium; browser tests will skip (and fail under CI=true)" >&2
    exit 0
  fi
  # NEEDRESTART_SUSPEND: no service-restart prompt (or noise) from needrestart's apt hook
  if ! apt-get update -qq \
      || ! NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; then
    echo "warning: could not install chromium; browser tests will skip (and fail under CI=true)" >&2
  fi
fi

if [ -x "$chromium_bin" ] && version="$("$chromium_bin" --version 2>/dev/null)"; then
  echo "chromium is ready: $version ($chromium_bin)"
else
  echo "warning: chromium is not ready at $chromium_bin; browser tests will skip (and fail under CI=true)" >&2
fi
exit 0
