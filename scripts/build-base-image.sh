#!/usr/bin/env bash
# Build the sandbox base image without any registry: debootstrap a minimal Debian into a folder
# and `docker import` it. Cached by tag: does nothing when the image exists (FORCE=1 rebuilds).
#   scripts/build-base-image.sh [TAG]     default TAG: hosted-agents/base:bookworm
#   scripts/build-base-image.sh --print-mirror     the package mirror it would use, and exit
# The package mirror is DEBIAN_MIRROR, else the one this machine's apt already uses (deb822
# `URIs:` in /etc/apt/sources.list.d/*.sources, then `deb URL suite` lines in
# /etc/apt/sources.list); there is no built-in default, so nothing is fetched from a host
# nobody configured. APT_SOURCES_DIR and APT_SOURCES_LIST point elsewhere (for tests).
set -euo pipefail

SUITE="${SUITE:-bookworm}"
PACKAGES="${PACKAGES:-git,ca-certificates,python3,procps}"

# The URI of an enabled `deb` entry for $SUITE, else of the first enabled `deb` entry.
deb822_mirror() {
  local files=()
  for f in "${APT_SOURCES_DIR:-/etc/apt/sources.list.d}"/*.sources; do [ -f "$f" ] && files+=("$f"); done
  [ ${#files[@]} -gt 0 ] || return 0
  awk -v suite="$SUITE" '
    function flush() {
      if (index(" " types " ", " deb ") && uri ~ /^(https?|ftp|file):/ && enabled != "no") {
        if (best == "" && index(" " suites " ", " " suite " ")) best = uri
        if (first == "") first = uri
      }
      types = uri = suites = ""; enabled = "yes"
    }
    BEGIN { enabled = "yes" }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    { key = tolower($1) }
    key == "types:" { $1 = ""; types = $0 }
    key == "uris:" { uri = $2 }
    key == "suites:" { $1 = ""; suites = $0 }
    key == "enabled:" { enabled = tolower($2) }
    END { flush(); print (best != "" ? best : first) }
  ' "${files[@]}"
}

classic_mirror() {
  local list="${APT_SOURCES_LIST:-/etc/apt/sources.list}"
  [ -f "$list" ] || return 0
  awk -v suite="$SUITE" '
    $1 == "deb" {
      i = 2
      if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }  # [option=value ...]
      if ($i !~ /^(https?|ftp|file):/) next
      if (best == "" && $(i + 1) == suite) best = $i
      if (first == "") first = $i
    }
    END { print (best != "" ? best : first) }
  ' "$list"
}

mirror() {
  local found="${DEBIAN_MIRROR:-}"
  [ -n "$found" ] || found="$(deb822_mirror)"
  [ -n "$found" ] || found="$(classic_mirror)"
  if [ -z "$found" ]; then
    echo "no package mirror: set DEBIAN_MIRROR, or configure apt (URIs: in ${APT_SOURCES_DIR:-/etc/apt/sources.list.d}/*.sources" \
         "or deb lines in ${APT_SOURCES_LIST:-/etc/apt/sources.list})" >&2
    return 1
  fi
  echo "$found"
}

if [ "${1:-}" = "--print-mirror" ]; then
  mirror
  exit
fi

TAG="${1:-hosted-agents/base:bookworm}"
if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"
  exit 0
fi
MIRROR="$(mirror)"
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

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
