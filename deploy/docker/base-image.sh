#!/usr/bin/env bash
# Make a local Debian base image with python3 for the clipserve images, without any image
# registry: debootstrap a minimal Debian from Debian's own package archive, then `docker import`.
# Pass the result as the images' BASE_IMAGE build argument. Cached: the root file system tarball
# under $CACHE_DIR, the image under its tag; rerunning does nothing when both exist.
#
#   deploy/docker/base-image.sh [TAG]      (root; needs debootstrap and a running docker)
set -euo pipefail

TAG=${1:-${BASE_TAG:-clipserve-base:bookworm}}
SUITE=${SUITE:-bookworm}  # python3 = 3.11 on bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/clipserve-deploy}
TARBALL="$CACHE_DIR/debian-$SUITE-python3.tar"
PACKAGES=python3,python3-venv,ca-certificates,libstdc++6,libgomp1,tini

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG: present"
    exit 0
fi
mkdir -p "$CACHE_DIR"
if [[ ! -s "$TARBALL" ]]; then
    command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
    rootfs=$(mktemp -d /tmp/clipserve-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap $SUITE ($PACKAGES) into $rootfs ..."
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
    # Same package sources as debootstrap used; no apt caches or lists in the image.
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar --numeric-owner -C "$rootfs" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
echo "docker import $TARBALL as $TAG"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$TAG" >/dev/null
docker image inspect --format '{{.Id}} {{.Size}}' "$TAG"
