"""Numerics modes: the settings that decide how TensorFlow does its arithmetic on a machine.

    invoke train --numerics portable     # the same weights on x86-64 machines with AVX2 (docs/reproducibility.md)
    invoke train --numerics fastest      # TensorFlow's own choices for this machine

TensorFlow and its oneDNN library read these settings from the environment
once, when they start, and never again. So `apply(mode)` must run before the
first `import tensorflow` in the process: `train_command` (commands.py) and
`train_torch` (torch_run.py) call it before they import TensorFlow or torch,
`reproduce` before it reruns a run, and `bench` applies it to each child's
environment; `tasks.py` only resolves the mode's name. It refuses
(UserError) when TensorFlow is already loaded with other values, since the
settings could no longer take effect.

Why each portable setting is needed (measured on Fashion-MNIST, see docs/reproducibility.md,
the table of portable settings):

- oneDNN's JIT kernels, which TensorFlow uses for every float32 matrix
  product (Dense and Conv2D through Eigen's contraction, `dnnl_sgemm`), are
  chosen for the newest instruction set the CPU has. AVX-512, AVX2 (with FMA)
  and AVX kernels round differently. `ONEDNN_MAX_CPU_ISA` caps them at AVX2,
  which nearly every x86-64 laptop since 2015 has (Intel Haswell, AMD Zen or
  newer).
- The intra-op thread count decides how Eigen splits reductions and matrix
  products, and TensorFlow takes it from the number of cores unless
  `TF_NUM_INTRAOP_THREADS` says otherwise. Fixed at 4, the split is the same
  on a 1-core container and a 16-core workstation.
- oneDNN's graph rewrites (`TF_ENABLE_ONEDNN_OPTS`): TensorFlow turns them
  on by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
  (tensorflow/core/util/port.cc), so an Intel 12th-generation laptop and an
  AMD Zen 3 desktop run different kernels for the same command. The mode
  fixes them on: with them on, an AVX-512 server (the issue's) and this AVX2
  AMD EPYC gave the same bits. oneDNN's floating-point math mode is fixed to
  STRICT (no silent bfloat16 or TF32).
- TensorFlow's deterministic ops; on a GPU also TF32 off, deterministic cuDNN
  and cuBLAS (workspace config) and no cuDNN autotuning.

On aarch64 (arm64 Linux, Docker on Apple silicon) the portable mode runs
TensorFlow's own Eigen kernels: TF_ENABLE_ONEDNN_OPTS=0, since TensorFlow
turns oneDNN (with Arm Compute Library kernels, which pick SVE code by the
CPU's vector length) on there by default for some CPUs only, and
ONEDNN_MAX_CPU_ISA (x86-64 names) is cleared. Threads and deterministic ops
are fixed as on x86-64. machine_kind() records the Arm CPU (implementer,
part, SVE or NEON) and whether QEMU user emulation runs the process.

What no setting fixes (docs/reproducibility.md's promise table): a CPU
below AVX2 cannot run AVX2 kernels; Arm machines run other kernels (Eigen's
NEON code, not x86-64's AVX) altogether; GPUs of different models run other
cuDNN algorithms; and an op that runs the CPU's approximate `rcpps` or
`rsqrtps` (whose tables differ between Intel and AMD) rounds by the vendor.
The lecture's optimizer was such an op, and the portable mode replaces it
(recipes.PortableRMSprop); the fast recipe's BatchNormalization is not
measured. `machine_kind()` records these, the estimate tables included
(cpuid.py), and `reproduce` compares them.

This module imports nothing heavy and never imports TensorFlow.
"""

from __future__ import annotations

import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

from classifier.config import UserError
from classifier.machinery import cpuid

# The instruction-set cap of the portable mode and the thread counts it fixes.
PORTABLE_ISA = "AVX2"  # Haswell (2013) / Zen (2017) and newer: nearly every x86-64 student machine
PORTABLE_INTRAOP_THREADS = 4  # a common laptop's core count; more cores than this stay idle in matrix products
PORTABLE_INTEROP_THREADS = 1  # the lecture's networks are one chain of ops: nothing runs side by side anyway

# Every value ONEDNN_MAX_CPU_ISA accepts in oneDNN 3.7 (TensorFlow 2.21's), lowest first.
# oneDNN silently ignores any other value, so the lab checks it.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT")

# The settings of each mode. "fastest" sets nothing: TensorFlow chooses for the
# machine, and whatever the user exported is kept.
MODES: dict[str, dict[str, str]] = {
    "fastest": {},
    "portable": {
        # CPU: which kernels, how many threads, which graph rewrites.
        "ONEDNN_MAX_CPU_ISA": PORTABLE_ISA,
        "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "TF_NUM_INTRAOP_THREADS": str(PORTABLE_INTRAOP_THREADS),
        "TF_NUM_INTEROP_THREADS": str(PORTABLE_INTEROP_THREADS),
        "OMP_NUM_THREADS": str(PORTABLE_INTRAOP_THREADS),
        "TF_DETERMINISTIC_OPS": "1",
        # GPU: TF32 rounds float32 inputs to 10-bit mantissas on Ampere and newer;
        # autotuning picks cuDNN algorithms by timing, which can differ from run to run.
        "NVIDIA_TF32_OVERRIDE": "0",
        "TF_CUDNN_DETERMINISTIC": "1",
        "TF_CUDNN_USE_AUTOTUNE": "0",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    },
}
DEFAULT_MODE = "fastest"
# The portable mode on aarch64: Eigen's kernels on every Arm CPU (see the module's docstring).
_AARCH64_PORTABLE = {"TF_ENABLE_ONEDNN_OPTS": "0"}
_ARM = ("aarch64", "arm64")

# Variables that change the arithmetic but that the portable mode clears rather
# than sets: each one, left in place, would undo part of the mode.
_CLEARED = {
    "portable": ("ONEDNN_CPU_ISA_HINTS", "DNNL_MAX_CPU_ISA", "DNNL_DEFAULT_FPMATH_MODE",
                 "TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD", "TF_USE_EIGEN_PARALLEL_FOR_IN_WORK_SHARDER"),
    "fastest": (),
}

# Everything recorded in a run's manifest: what the modes set or clear, plus
# variables that are checked but not on the training path (numpy's OpenBLAS
# only scales the images, element by element, which rounds the same everywhere).
RECORDED = tuple(dict.fromkeys([
    *MODES["portable"], *_CLEARED["portable"],
    "TF_FORCE_GPU_ALLOW_GROWTH", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED",
    "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_NUM_THREADS",
]))


def settings(mode: str, architecture: str | None = None) -> dict[str, str]:
    """The environment variables `mode` sets, name -> value.

    Args:
        mode: a name from MODES.
        architecture: what platform.machine() says (default: this machine's);
            on aarch64 the portable mode is Eigen's kernels, not oneDNN's.

    Raises:
        UserError: an unknown mode (the message lists the accepted ones).
    """
    if mode not in MODES:
        raise UserError(f"unknown numerics mode {mode!r}; accepted: {', '.join(MODES)}")
    chosen = dict(MODES[mode])
    if mode == "portable" and (architecture or platform.machine()) in _ARM:
        del chosen["ONEDNN_MAX_CPU_ISA"]
        chosen.update(_AARCH64_PORTABLE)
    return chosen


def _cleared(mode: str) -> tuple[str, ...]:
    """The variables `mode` removes: on aarch64 also the x86-64 ISA cap, which means nothing there."""
    extra = ("ONEDNN_MAX_CPU_ISA",) if mode == "portable" and platform.machine() in _ARM else ()
    return (*_CLEARED[mode], *extra)


def apply(mode: str, environ: dict | None = None, announce=None) -> dict:
    """Set `mode`'s variables in the environment, before TensorFlow starts.

    A value the user exported that the mode replaces is announced in one line,
    e.g. "numerics portable overrides TF_NUM_INTRAOP_THREADS=16 -> 4", so that
    nobody wonders why their setting had no effect.

    Args:
        mode: a name from MODES.
        environ: the environment to change (default: os.environ, which is what
            TensorFlow reads; a dict in tests).
        announce: called with the one line about overridden values (default: print it on stderr).

    Returns:
        The manifest's record: {"mode", "applied" (what the mode set),
        "overridden" (the user's values it replaced or cleared), "environment"
        (every RECORDED variable as it now is), "machine" (see machine_kind)}.

    Raises:
        UserError: an unknown mode; an invalid ONEDNN_MAX_CPU_ISA under
            "fastest" (oneDNN would ignore it without a word); or TensorFlow
            already imported in this process with other values.
    """
    wanted = settings(mode)
    environ = os.environ if environ is None else environ
    if mode == "fastest" and environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in ("", *ONEDNN_ISAS):
        raise UserError(f"ONEDNN_MAX_CPU_ISA={environ['ONEDNN_MAX_CPU_ISA']} is not a level oneDNN knows "
                        f"(it would be ignored); accepted: {', '.join(ONEDNN_ISAS)}")
    overridden = {name: environ[name] for name, value in wanted.items()
                  if name in environ and environ[name] != value}
    overridden.update({name: environ[name] for name in _cleared(mode) if name in environ})
    if environ is os.environ and "tensorflow" in sys.modules and (overridden or _missing(wanted, environ)):
        raise UserError(f"numerics mode {mode!r} must be chosen before TensorFlow is imported; "
                        "run the command in a fresh process (a new terminal or notebook kernel)")
    if overridden:
        changes = ", ".join(f"{name}={value} -> {wanted.get(name, '(unset)')}" for name, value in overridden.items())
        (announce or _print_to_stderr)(f"numerics {mode} overrides {changes}")
    for name in _cleared(mode):
        environ.pop(name, None)
    environ.update(wanted)
    return record(mode, environ, applied=wanted, overridden=overridden)


def use(mode: str | None = None) -> None:
    """A notebook's first cell: apply the mode `invoke train` would use here (see resolve), before TensorFlow starts.

    The same as `apply(resolve(mode))`, but it returns nothing, so the cell
    shows nothing; the run record (lab.record_run) keeps the details.
    """
    apply(resolve(mode))


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _missing(wanted: dict, environ) -> bool:
    return any(environ.get(name) != value for name, value in wanted.items())


def record(mode: str, environ=None, applied: dict | None = None, overridden: dict | None = None) -> dict:
    """The manifest entry for `mode` as the environment now stands (see apply)."""
    environ = os.environ if environ is None else environ
    return {
        "mode": mode,
        "applied": dict(settings(mode) if applied is None else applied),
        "overridden": dict(overridden or {}),
        "environment": {name: environ.get(name) for name in RECORDED},
        "machine": machine_kind(),
    }


def machine_kind() -> dict:
    """What decides the arithmetic beyond the environment: CPU, its instruction set and caches, GPUs.

    `reproduce` compares a run's recorded kind with this machine's (see
    kind_differences) to decide whether to expect identical weights or only
    metrics within a tolerance. TensorFlow-free: it reads /proc, /sys and nvidia-smi.

    Returns:
        {"architecture", "vendor", "cpu_model", "cpus" (this process may use),
        "isa" (the highest of avx512f/avx2/avx/sse4_1, or on Arm sve2/sve/asimd,
        the CPU has), "l1d_kib" and "l2_kib" (per core, None if unknown),
        "gpus" (model names), "emulated" ("qemu-user" under QEMU user
        emulation; else None), "estimates" (the fingerprint of the CPU's
        rcpps/rsqrtps tables, see cpuid.py; None off x86-64), "cpuid" (what
        the process executes: cpuid.executed())}.
        On x86-64 vendor and isa are what CPUID answers this process, so an
        emulated CPU is recorded as the CPU it computes as, and cpu_model
        names both it and the host. On an Arm host emulating nothing the
        Arm CPU is read from /proc/cpuinfo; an aarch64 process under
        emulation on an x86-64 host has vendor None and the emulated CPU's
        isa (its hardware capabilities, from /proc/self/auxv).
    """
    info = cpuinfo_fields()
    architecture = platform.machine()
    executed = cpuid.executed()
    # x86-64 under QEMU: /proc/cpuinfo is the host's, CPUID and the estimates the emulated CPU's;
    # no hardware computes rcpps exactly.
    emulated = (architecture in _ARM and "vendor_id" in info) or bool(executed and executed["estimates_exact"])
    # x86-64 names its instruction sets "flags", Arm "Features".
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if architecture in _ARM and (emulated or not flags):
        flags = _arm_hwcaps()
    arm_model = f"implementer {info['CPU implementer']} part {info.get('CPU part')}" if "CPU implementer" in info else None
    host_model = info.get("model name")
    if executed and emulated:
        host_model = f"{executed['brand']} ({executed['vendor']}) under QEMU user emulation on {host_model}"
    elif emulated:
        host_model = f"QEMU user emulation on {host_model}"
    return {
        "architecture": architecture,
        "vendor": executed["vendor"] if executed else (None if emulated else info.get("vendor_id")
                                                       or info.get("CPU implementer")),
        "cpu_model": host_model or arm_model or platform.processor() or None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": executed["isa"] if executed else next(
            (name for name in ("avx512f", "avx2", "avx", "sse4_1", "sve2", "sve", "asimd") if name in flags), None),
        "l1d_kib": _cache_kib(1, "Data"),
        "l2_kib": _cache_kib(2, "Unified"),
        "gpus": _gpu_models(),
        "emulated": "qemu-user" if emulated else None,
        "estimates": executed["estimates"] if executed else None,
        "cpuid": executed,
    }


def native_bfloat16(environ=None) -> bool:
    """Whether TensorFlow computes bfloat16 in hardware here: AMX or AVX-512 BF16, and oneDNN allowed to use it.

    Elsewhere TensorFlow converts bfloat16 to float32 and back around every
    operation, which is slower than float32 (benchmarks/NOTES.md); and with
    oneDNN capped below those instructions (`ONEDNN_MAX_CPU_ISA=AVX2`, as the
    portable mode sets) or switched off, its bfloat16 convolutions fail.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return False
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap != "ALL" and not any(level in cap for level in ("BF16", "FP16", "AMX", "AVX10")):
        return False
    flags = set(cpuinfo_fields().get("flags", "").split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _arm_hwcaps(auxv: Path = Path("/proc/self/auxv")) -> set[str]:
    """The Arm instruction sets the kernel (or QEMU, which writes the emulated CPU's) reports in the aux vector."""
    try:
        vector = dict(struct.iter_unpack("=QQ", auxv.read_bytes()))
    except (OSError, struct.error):
        return set()
    hwcap, hwcap2 = vector.get(16, 0), vector.get(26, 0)  # AT_HWCAP, AT_HWCAP2 (linux/auxvec.h)
    # HWCAP_ASIMD, HWCAP_SVE and HWCAP2_SVE2 (arch/arm64/include/uapi/asm/hwcap.h).
    return {name for name, present in (("asimd", hwcap & 1 << 1), ("sve", hwcap & 1 << 22), ("sve2", hwcap2 & 1 << 1))
            if present}


def cpuinfo_fields(text: str | None = None) -> dict[str, str]:
    """The first processor's entries in /proc/cpuinfo (empty where there is none).

    Args:
        text: the file's text to read instead of this machine's (tests give a made-up one).
    """
    entries: dict[str, str] = {}
    try:
        for line in (Path("/proc/cpuinfo").read_text(encoding="utf-8") if text is None else text).splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and entries:
                break  # the blank line after the first processor
            entries.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return entries


def _cache_kib(level: int, kind: str) -> int | None:
    """The per-core cache of `level` and `kind` in KiB from sysfs (what CPUID reports), or None."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text(encoding="utf-8").strip() == str(level) and (index / "type").read_text(encoding="utf-8").strip() == kind:
                return int((index / "size").read_text(encoding="utf-8").strip().rstrip("K"))
        except (OSError, ValueError):
            continue
    return None


def _gpu_models() -> list[str]:
    """NVIDIA GPU model names from nvidia-smi, without starting TensorFlow ([] without a GPU)."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def effective_isa(mode: str, isa: str | None) -> str | None:
    """The instruction set oneDNN uses under `mode` on a CPU whose highest is `isa`."""
    if mode == "portable" and isa == "avx512f":
        return "avx2"  # the cap
    if mode == "portable" and isa in ("sve", "sve2"):
        return "asimd"  # Eigen's kernels, NEON on every Arm CPU
    return isa


def kind_differences(mode: str, recorded: dict | None, current: dict) -> list[str]:
    """One line per way the recorded machine differs from this one in what changes the numbers under `mode`.

    Under "portable" only what was measured to change the bits counts
    (docs/reproducibility.md): the architecture, the instruction set after
    the cap, the CPU's rcpps/rsqrtps tables ("estimates"; for a run recorded
    before they were, the vendor stands in for them) and the GPU models. The
    core count and CPU model do not (the threads are fixed and the
    instruction set is capped), nor the cache sizes: a 48 KiB-L1 Zen 5 gave
    the bits of a 32 KiB-L1 EPYC. Under "fastest" everything in
    machine_kind() counts.

    Args:
        mode: the run's numerics mode.
        recorded: the manifest's numerics["machine"] (None where the run recorded none).
        current: machine_kind() here.

    Returns:
        e.g. ["estimates: b2868684 -> 5d2f07e1"]; empty when the rerun should be bit-identical,
        and where either side recorded no kind (a run made before it was
        recorded, or a notebook's run): for those the promise stays the
        same-machine one, judged by the environment's CPU and core count.
    """
    if not recorded or not current:
        return []
    tables = "estimates" if "estimates" in recorded and "estimates" in current else "vendor"
    keys = ["architecture", tables, "isa", "gpus"]
    if mode != "portable":
        keys = ["architecture", "cpu_model", "cpus", "vendor", "isa", "l1d_kib", "l2_kib", "gpus"]
        keys[4:4] = ["estimates"] if tables == "estimates" else []
    lines = []
    for key in keys:
        before, now = recorded.get(key), current.get(key)
        if key == "isa":
            before, now = effective_isa(mode, before), effective_isa(mode, now)
        if before != now:
            lines.append(f"{key}: {before} -> {now}")
    return lines


def mode_of(numerics_env: dict, architecture: str | None = None) -> str:
    """The mode whose settings a run's recorded variables (its environment's numerics_env) hold.

    A notebook's run records no mode: `lab.use_numerics()` applied one from
    $CLASSIFIER_NUMERICS, and only the variables it left show which.

    Args:
        numerics_env: the recorded RECORDED variables, name -> value (None where unset).
        architecture: the run's machine (default: try x86-64's and aarch64's portable settings both).
    """
    for machine in (architecture,) if architecture else ("x86_64", "aarch64"):
        if all(numerics_env.get(name) == value for name, value in settings("portable", machine).items()):
            return "portable"
    return "fastest"


def resolve(mode: str | None) -> str:
    """The mode for `invoke train`: `mode` if given, else $CLASSIFIER_NUMERICS, else DEFAULT_MODE.

    Every container of the lab image has CLASSIFIER_NUMERICS=portable (docker/Dockerfile sets it).

    Raises:
        UserError: $CLASSIFIER_NUMERICS holds an unknown mode (the message names the variable).
    """
    if mode:
        return mode
    from_environment = os.environ.get("CLASSIFIER_NUMERICS", "")
    if from_environment and from_environment not in MODES:
        raise UserError(f"CLASSIFIER_NUMERICS={from_environment} is not a numerics mode; accepted: {', '.join(MODES)}")
    return from_environment or DEFAULT_MODE
