#!/usr/bin/env bash
# Bring up what the tests talk to: PostgreSQL on 127.0.0.1:5432, Chromium for the browser tests
# (installed if missing), a Docker engine (installed and started if missing: needs root and apt)
# and the sandbox base image (built locally, no registry).
# Outside CI a missing piece is reported and its tests skip; under CI=true they fail.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if pg_up; then echo "PostgreSQL is up on 127.0.0.1:5432"; else echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; fi

# Chromium (Debian's package) for the browser tests, driven by playwright with executable_path.
if [ "${SKIP_CHROMIUM:-0}" = 1 ]; then
  echo "SKIP_CHROMIUM=1: not preparing Chromium (the browser tests skip, or fail under CI=true)"
else
  "$here/ensure-chromium.sh"
fi

if [ "${SKIP_DOCKER:-0}" = 1 ]; then
  echo "SKIP_DOCKER=1: not preparing Docker (its tests skip, or fail under CI=true)"
  exit 0
fi
if "$here/ensure-docker.sh"; then
  "$here/build-base-image.sh" || echo "could not build the sandbox base image" >&2
else
  echo "no Docker engine: the sandbox tests will skip (and fail under CI=true)" >&2
fi
exit 0
