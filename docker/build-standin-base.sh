#!/usr/bin/env bash
# Builds a stand-in for the lab's base image (python:3.11-slim-bookworm) from
# Debian packages, for CI machines that reach no image registry.
#
#   bash docker/build-standin-base.sh [IMAGE_TAG]    # default classifier-lab-base:bookworm
#   ARCH=arm64 bash docker/build-standin-base.sh classifier-lab-base:bookworm-arm64   # needs qemu-user-static
#
# It makes a Debian bookworm root file system with debootstrap (Python 3.11,
# venv, CA certificates), copies in this machine's CA bundle and pip timeout so
# that apt-get and pip work inside a build run with --network host, and turns
# it into an image with `docker import`. The real docker/Dockerfile then builds
# over it with --build-arg BASE_IMAGE=IMAGE_TAG. Nothing here belongs in the
# real Dockerfile: those are needs of this machine, not of the lab.
#
# Environment: DEBIAN_MIRROR (default: the first Debian URI in this machine's
# apt sources), FORCE=1 to rebuild an image that already exists, ARCH (Debian's
# name, default this machine's: amd64, arm64; another one runs under QEMU).
set -euo pipefail

image="${1:-classifier-lab-base:bookworm}"
suite=bookworm
arch="${ARCH:-$(dpkg --print-architecture)}"

if docker image inspect "$image" >/dev/null 2>&1 && [[ "${FORCE:-0}" != 1 ]]; then
    echo "build-standin-base: $image exists (FORCE=1 rebuilds it)"
    exit 0
fi

# The mirror this machine's apt already uses, so the stand-in needs no other host.
_find_mirror() {
    local uri
    uri="$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -v security | head -n 1 | tr -d ' ' || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}
mirror="${DEBIAN_MIRROR:-$(_find_mirror)}"
mirror="${mirror%/}"

rootfs="$(mktemp -d /var/tmp/classifier-lab-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
# mktemp makes the folder 0700, and it becomes the image's /: a non-root user
# could then reach nothing in it.
chmod 0755 "$rootfs"

echo "build-standin-base: debootstrap $suite ($arch) from $mirror"
debootstrap --variant=minbase --arch="$arch" \
    --include=ca-certificates,python3,python3-venv \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# The same suites as the official image has, from the same mirror.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror}-security $suite-security main
EOF
# Security updates come from a sibling path only on deb.debian.org-like mirrors.
if ! curl -fsI "${mirror}-security/dists/$suite-security/Release" >/dev/null 2>&1; then
    sed -i '/-security/d' "$rootfs/etc/apt/sources.list"
fi

# This machine reaches PyPI through a TLS proxy whose CA is only in its own
# bundle; keep it in the image and where update-ca-certificates looks, so that
# an apt-get that reconfigures ca-certificates does not drop it.
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -m 0644 /etc/ssl/certs/ca-certificates.crt \
    "$rootfs/usr/local/share/ca-certificates/standin-host-bundle.crt"

rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/debootstrap

tar -C "$rootfs" --numeric-owner -c . | docker import --platform "linux/$arch" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_DEFAULT_TIMEOUT=180' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null

# Docker 20.10's daemon (Debian's docker.io) ignores `docker import --platform`
# and records its own architecture in the image's config, so an arm64 base
# would say amd64 and `docker build --platform linux/arm64` refuses it. Write
# the architecture into the config (docker save, edit, docker load): the
# layer is unchanged, the image id is the new config's digest.
if [[ "$(docker image inspect -f '{{.Architecture}}' "$image")" != "$arch" ]]; then
    docker save "$image" | python3 -c '
import hashlib, io, json, sys, tarfile
arch = sys.argv[1]
source = tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read()))
members = {member.name: source.extractfile(member).read() if member.isfile() else None for member in source}
manifest = json.loads(members["manifest.json"])
config = json.loads(members.pop(manifest[0]["Config"]))
config.update(architecture=arch, variant="v8") if arch == "arm64" else config.update(architecture=arch)
config_bytes = json.dumps(config).encode()
manifest[0]["Config"] = hashlib.sha256(config_bytes).hexdigest() + ".json"
members[manifest[0]["Config"]] = config_bytes
members["manifest.json"] = json.dumps(manifest).encode()
members.pop("repositories", None)
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:
    for member in source.getmembers():
        if not member.isfile():
            out.addfile(member)
    for name, data in members.items():
        if data is not None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
' "$arch" | docker load >/dev/null
fi
echo "build-standin-base: built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
