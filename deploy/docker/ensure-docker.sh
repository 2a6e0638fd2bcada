#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io (and debootstrap) if missing,
# start dockerd in the background if it is not running. Root only; for the smoke test
# (`make deploy-test`), not for production hosts.
set -euo pipefail
LOG=${DOCKERD_LOG:-/tmp/clipserve-dockerd.log}
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "installing docker.io and debootstrap with apt ..."
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi
echo "starting dockerd (log: $LOG) ..."
nohup dockerd >"$LOG" 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        docker version --format 'docker engine {{.Server.Version}}'
        exit 0
    fi
    sleep 1
done
echo "ensure-docker.sh: dockerd did not answer within 60 s; see $LOG" >&2
exit 1
