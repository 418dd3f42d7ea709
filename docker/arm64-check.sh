#!/usr/bin/env bash
# The lab on arm64, under QEMU user emulation on an x86-64 machine (CI's arm64 tier,
# tests/test_arm64.py).
#
#   bash docker/arm64-check.sh [WORK]      # default /var/tmp/classifier-arm64; needs root
#
# 1. registers QEMU's aarch64 interpreter with binfmt_misc (qemu-user-static);
# 2. makes a Debian bookworm arm64 root file system with debootstrap (python3,
#    graphviz), kept in WORK/root: a second run reuses it (cache WORK in CI);
# 3. installs requirements/{cpu,lab,torch}-linux-aarch64.lock and course.lock into a virtual
#    environment in that root with this machine's pip for the aarch64 platform
#    (--require-hashes; native speed, pip under QEMU is ~20x slower), kept
#    while the locks are unchanged; the wheels stay in WORK/wheels, so a
#    changed lock downloads only what changed;
# 4. builds the check's small Fashion-MNIST (docker/arm64_dataset.py: the
#    first 600 training and 200 test images of Debian's files, verified,
#    in the published format) and imports it with `invoke data --from`: under
#    QEMU TensorFlow computes ~500x slower than natively, and the evaluation
#    on all 10,000 test images alone took 2,568 s;
# 5. trains the x86-64 reference run here: fit, --numerics portable;
# 6. then, in the arm64 root, under QEMU (uname -m: aarch64; QEMU_CPU, default
#    neoverse-n1, the Arm server core of AWS Graviton2 and Ampere Altra), side
#    by side: invoke doctor; invoke train --limit 600 --epochs 1 for fit
#    (--numerics portable), then invoke reproduce of the fit run (same bits on
#    arm64). One trainer only: tape and torch cost 290 s more under QEMU, and
#    their aarch64 wheels are proven by `invoke lock --proof`; the code they
#    run is the same Python as on x86-64;
# 7. invoke compare of the x86-64 run with the arm64 fit run (the same
#    settings and data on two architectures: within the tolerance).
# Each step prints its time; the whole ends with "arm64-check: passed in N s"
# or the failing step. FORCE=1 starts from nothing (no cached root or environment).
#
# Environment: PYTHON (default .venv/bin/python) is the x86-64 Python with the
# lab installed (it trains the reference run and runs pip), DEBIAN_MIRROR
# (default deb.debian.org), FASHION_MNIST (default Debian's
# /usr/share/datasets/fashion-mnist, package dataset-fashion-mnist), QEMU_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="${1:-/var/tmp/classifier-arm64}"
root="$work/root"
check="$work/check"
python="${PYTHON:-$repo/.venv/bin/python}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fashion="${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
qemu_cpu="${QEMU_CPU:-neoverse-n1}"
locks=(requirements/cpu-linux-aarch64.lock requirements/lab-linux-aarch64.lock requirements/torch-linux-aarch64.lock
       requirements/course.lock)
started=$SECONDS
step_started=$SECONDS

step() {  # the time of the step before, then this one's name
    if [[ -n "${step_name:-}" ]]; then echo "arm64-check: ${step_name}: $((SECONDS - step_started)) s"; fi
    step_name="$1"
    step_started=$SECONDS
    echo "arm64-check: == $1"
}
fail() { echo "arm64-check: FAILED at ${step_name:-setup}: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || fail "needs root (debootstrap, chroot, binfmt_misc)"
[[ -x "$python" ]] || fail "no x86-64 lab Python at $python: run ./setup.sh or set PYTHON"
[[ -d "$fashion" ]] || fail "no Fashion-MNIST at $fashion: apt-get install dataset-fashion-mnist"
if [[ "${FORCE:-0}" == 1 ]]; then rm -rf "$work"; fi
mkdir -p "$work"

step "qemu binfmt"
command -v qemu-aarch64-static >/dev/null || fail "qemu-aarch64-static missing: apt-get install qemu-user-static"
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

step "arm64 root (debootstrap)"
if [[ ! -x "$root/usr/bin/python3" ]]; then
    rm -rf "$root" && mkdir -p "$root" && chmod 0755 "$root"
    debootstrap --arch=arm64 --variant=minbase --include=ca-certificates,graphviz,python3,python3-venv \
        bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap (log: $work/debootstrap.log)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb
fi

# Runs a command line in the arm64 root: its own mount namespace, so that the
# mounts vanish with it; the repository appears at /repo, WORK/check at /check
# and at its own path too, where the x86-64 run's manifest says its data are.
# /sys holds only the CPU lists: under QEMU user emulation the x86-64 host's
# /sys makes PyTorch's CPU probing (cpuinfo, xbyak_aarch64) crash with SIGSEGV.
in_arm64() {
    unshare --mount --propagation private --fork bash -c '
        set -e
        root="$1"; repo="$2"; check="$3"; cpu="$4"; shift 4
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs sys "$root/sys"
        mkdir -p "$root/sys/devices/system/cpu"
        for list in possible present online; do echo "0-$(($(nproc) - 1))" > "$root/sys/devices/system/cpu/$list"; done
        mkdir -p "$root/repo" "$root/check" "$root$check"
        mount --bind "$repo" "$root/repo"
        mount --bind "$check" "$root/check"
        mount --bind "$check" "$root$check"
        exec chroot "$root" /usr/bin/env -i PATH=/lab/venv/bin:/usr/bin:/bin HOME=/check/home LANG=C.UTF-8 \
            PYTHONPATH=/repo MPLBACKEND=Agg QEMU_CPU="$cpu" bash -c "cd /repo && $*"' \
        _ "$root" "$repo" "$check" "$qemu_cpu" "$@"
}

step "aarch64 locks into /lab/venv (pip --platform, --require-hashes)"
wanted="$(cat "${locks[@]}" | sha256sum | cut -c1-16)"
site="$root/lab/venv/lib/python3.11/site-packages"
if [[ "$(cat "$root/lab/venv/.locks" 2>/dev/null)" != "$wanted" ]]; then
    rm -rf "$root/lab/venv"
    mkdir -p "$check"
    in_arm64 "python3 -m venv --without-pip /lab/venv"
    tags=()
    for minor in $(seq 28 -1 17); do tags+=(--platform "manylinux_2_${minor}_aarch64"); done
    # --no-deps: pip judges markers by this x86-64 machine (torch 2.9.1 names
    # CUDA packages for x86_64); uv resolved the locks for aarch64, complete.
    # The wheels are downloaded into WORK/wheels (kept: pip skips a file that is
    # there with its hash) and installed from there: pip's HTTP cache keeps
    # nothing where the index's proxy drops the Cache-Control headers, as here.
    pip_aarch64=(--only-binary=:all: "${tags[@]}" --platform manylinux2014_aarch64 --python-version 3.11
                 --implementation cp --require-hashes --no-deps $(printf -- '-r %s ' "${locks[@]}"))
    "$python" -m pip download --quiet "${pip_aarch64[@]}" -d "$work/wheels" 2> >(grep -v "^WARNING: Location" >&2) \
        || fail "pip download of the aarch64 locks"
    "$python" -m pip install --quiet --no-compile --no-index --find-links "$work/wheels" --target "$site" \
        "${pip_aarch64[@]}" 2> >(grep -v "^WARNING: Location" >&2) || fail "pip install of the aarch64 locks"
    echo "$wanted" > "$root/lab/venv/.locks"
fi

step "the check's Fashion-MNIST (first 600 training, 200 test images), invoke data --from"
rm -rf "$check" && mkdir -p "$check/home"
lab_x86() { PYTHONPATH="$repo" "$python" docker/arm64_dataset.py invoke "$check/source/dataset.json" "$@"; }
lab_arm64() { in_arm64 "python docker/arm64_dataset.py invoke /check/source/dataset.json $*"; }
PYTHONPATH="$repo" "$python" docker/arm64_dataset.py build "$fashion" "$check/source" >/dev/null || fail "building it"
lab_x86 data --dataset fashion_mnist_check --from "$check/source" --data-dir "$check/data" | grep verified

train_flags="--dataset fashion_mnist_check --limit 600 --epochs 1 --data-dir /check/data"
step "x86-64: invoke train --trainer fit --numerics portable (the reference)"
lab_x86 train ${train_flags//\/check/$check} --numerics portable --runs-dir "$check/x86_64" || fail "x86-64 run"
x86_run="$(ls -d "$check"/x86_64/*/ | head -n 1)"

step "arm64: uname -m"
[[ "$(in_arm64 "uname -m")" == aarch64 ]] || fail "the root does not run as aarch64"

# doctor runs beside the chain fit, then reproduce, so that it costs no time
# where a second core is free (with all three trainers side by side, two busy
# cores gave 623 s against 699 s one after the other). Each writes its own
# log; the logs are printed in order, each with its time, once all have ended.
timed() {  # NAME COMMAND...: output into logs/NAME, "STATUS BEGUN ENDED" (s into the step) into logs/NAME.status
    local name="$1" begun=$((SECONDS - step_started)) status=0
    shift
    "$@" >"$check/logs/$name" 2>&1 || status=$?
    echo "$status $begun $((SECONDS - step_started))" >"$check/logs/$name.status"
    return "$status"
}
arm_fit_run() { echo "/check/runs/fit/$(basename "$(ls -d "$check"/runs/fit/*/ | head -n 1)")"; }

step "arm64: doctor, and the fit trainer then reproduce, side by side"
mkdir -p "$check/logs"
( timed fit lab_arm64 train $train_flags --trainer fit --numerics portable --runs-dir /check/runs/fit \
  && timed reproduce lab_arm64 reproduce "$(arm_fit_run)" --runs-dir /check/reruns ) &
( timed doctor lab_arm64 doctor --data-dir /check/data --runs-dir /check/runs ) &
wait
failed=()
for name in doctor fit reproduce; do
    case "$name" in
        doctor) title="arm64: invoke doctor" ;;
        reproduce) title="arm64: invoke reproduce (the fit run, same bits)" ;;
        *) title="arm64: invoke train --trainer $name" ;;
    esac
    echo "arm64-check: == $title"
    cat "$check/logs/$name" 2>/dev/null || true
    read -r status begun ended 2>/dev/null <"$check/logs/$name.status" || status="not run"
    if [[ "$status" == 0 ]]; then
        echo "arm64-check: $title: $((ended - begun)) s (from $begun s to $ended s of the step)"
    else
        echo "arm64-check: $title: FAILED ($status)"
        failed+=("$name")
    fi
done
((${#failed[@]} == 0)) || fail "${failed[*]}"

step "invoke compare (the x86-64 run, the arm64 fit run)"
lab_x86 compare "$x86_run" "$check$(arm_fit_run | cut -c7-)" || fail "invoke compare"

step "done"
echo "arm64-check: passed in $((SECONDS - started)) s"
