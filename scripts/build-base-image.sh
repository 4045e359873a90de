#!/usr/bin/env bash
# Build the sandbox base image without any registry: debootstrap a minimal Debian into a folder
# and `docker import` it. Cached by tag: does nothing when the image exists (FORCE=1 rebuilds).
#   scripts/build-base-image.sh [TAG]     default TAG: hosted-agents/base:bookworm
set -euo pipefail

TAG="${1:-hosted-agents/base:bookworm}"
SUITE="${SUITE:-bookworm}"
PACKAGES="${PACKAGES:-git,ca-certificates,python3,procps}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
# The mirror apt already uses on this machine, unless DEBIAN_MIRROR says otherwise.
MIRROR="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

ROOT="$(mktemp -d /tmp/hosted-agents-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap $SUITE from $MIRROR (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >/tmp/debootstrap.log 2>&1 \
  || { tail -n 20 /tmp/debootstrap.log >&2; exit 1; }
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/sh"]' - "$TAG" >/dev/null
echo "built $TAG"
