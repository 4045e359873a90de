#!/usr/bin/env bash
# Make a Docker engine reachable: install docker.io if the daemon is missing, and start dockerd
# if it is not running. On these machines there is no private-range network: no bridge, no
# iptables (sandboxes in tests use network mode `host` or `none`).
set -euo pipefail

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
  echo "Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing the Docker engine (docker.io)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
echo "starting dockerd"
mkdir -p /var/log
nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  engine_up && { echo "Docker engine is up"; exit 0; }
  sleep 1
done
echo "dockerd did not come up; see /var/log/dockerd.log" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
