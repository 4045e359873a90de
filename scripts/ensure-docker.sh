#!/usr/bin/env bash
# Make a Docker engine reachable: install docker.io if the daemon is missing, and start dockerd
# if it is not running. On these machines there is no private-range network: no bridge, no
# iptables (sandboxes in tests use network mode `host` or `none`).
set -euo pipefail

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Per-sandbox disks (SANDBOX_DISK) are ext4 images on loop devices: they need mkfs.ext4.
if ! command -v mkfs.ext4 >/dev/null 2>&1; then
  echo "installing e2fsprogs (mkfs.ext4, for sandbox disks)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null
fi

if engine_up; then
  echo "Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing the Docker engine (docker.io)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
# A daemon that was killed (e.g. with the session that started it) leaves pid files behind,
# and dockerd refuses to start over them: remove those whose process is gone.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
    echo "removing stale $pidfile"
    rm -f "$pidfile"
  fi
done
echo "starting dockerd"
mkdir -p /var/log
# In a subshell that first closes every inherited descriptor beyond stdio: the daemon outlives
# this script, and must not keep open a lock (`flock make test`) or a pipe its caller waits on.
(
  for fd in $(ls /proc/$BASHPID/fd); do
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  exec nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/dockerd.log 2>&1 </dev/null
) &
daemon=$!
for _ in $(seq 1 60); do
  engine_up && { echo "Docker engine is up"; exit 0; }
  kill -0 "$daemon" 2>/dev/null || break  # it exited: no point waiting
  sleep 1
done
echo "dockerd did not come up; see /var/log/dockerd.log" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
