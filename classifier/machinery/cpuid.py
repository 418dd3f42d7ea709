"""The x86-64 CPU as this process executes it: CPUID, and the CPU's own reciprocal estimates.

    facts = executed()   # {"vendor": "AuthenticAMD", "family": 25, ..., "rcpps_of_3": "3eaaa800", ...}

/proc/cpuinfo describes the host; under an emulator (QEMU's user mode) the
process executes another CPU, and computes as that one. So the lab runs the
instructions themselves: CPUID for vendor, model and instruction sets, and
`rcpps`/`rsqrtps` on fixed inputs. Those two return a 12-bit estimate read
from a table that each CPU design has its own of (AMD's are not Intel's;
QEMU computes them exactly), and they are what split the same training
between an Intel and an AMD CPU (docs/reproducibility.md), so their outputs
are the fact that matters, recorded as a fingerprint.

A few bytes of machine code are run through ctypes in executable memory
(mmap on Linux and macOS, VirtualAlloc on Windows). Where that is refused
(a hardened kernel, another architecture) executed() returns None.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import platform
import struct
import sys

# cpuid(leaf, subleaf, uint32 out[4]) -> out = eax, ebx, ecx, edx. Arguments in rdi, rsi, rdx (System V)
# or rcx, rdx, r8 (Windows); rbx is callee-saved in both, so it is pushed around CPUID.
_STORE = bytes.fromhex("41890041895804418948084189500c5bc3")  # mov [r8], eax/ebx/ecx/edx; pop rbx; ret
_CPUID = {
    "sysv": bytes.fromhex("5389f889f14989d00fa2") + _STORE,  # push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid
    "windows": bytes.fromhex("5389c889d10fa2") + _STORE,  # push rbx; mov eax, ecx; mov ecx, edx; cpuid
}
# estimates(float in[4], float out[8]) -> out = rcpps(in), rsqrtps(in): movups, rcpps, movups, rsqrtps, movups, ret.
_ESTIMATES = {
    "sysv": bytes.fromhex("0f10070f53c80f110e0f52c80f114e10c3"),
    "windows": bytes.fromhex("0f10010f53c80f110a0f52c80f114a10c3"),
}
# Inputs covering every entry of the estimate tables: mantissas across [1, 2), and [2, 4) for the
# square root, whose table also depends on the exponent's parity.
_TABLE_INPUTS = tuple(1.0 + k / 128 for k in range(384))


def executed() -> dict | None:
    """What the CPU executing this process reports and computes, or None off x86-64 or where code cannot run.

    Returns:
        {"vendor" (e.g. "GenuineIntel"), "brand" (the model name CPUID gives,
        which under QEMU is the emulated model's), "family", "model",
        "stepping", "isa" (the highest of avx512f, avx2, avx, sse4_1), "rcpps_of_3" and
        "rsqrtps_of_3" (hex of the estimates of 1/3 and 1/sqrt(3): hardware
        AMD 3eaaa800, exact 3eaaaaab), "estimates" (SHA-256, 8 hex, of both
        estimates over every table entry: equal on two CPUs when their tables
        are), "estimates_exact" (True when every rcpps estimate is the correctly
        rounded reciprocal, as QEMU computes them and no hardware does)}.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    abi = "windows" if sys.platform == "win32" else "sysv"
    try:
        cpuid = _function(_CPUID[abi], None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))
        estimate = _function(_ESTIMATES[abi], None, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float))
    except (OSError, ValueError, AttributeError):
        return None
    return {**_identity(cpuid), **_estimates(estimate)}


def _identity(cpuid) -> dict:
    """Vendor, brand, family/model/stepping and the two instruction sets that matter, from CPUID leaves."""
    def leaf(number: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        registers = (ctypes.c_uint32 * 4)()
        cpuid(number, subleaf, registers)
        return tuple(registers)

    highest, ebx, ecx, edx = leaf(0)
    vendor = struct.pack("<III", ebx, edx, ecx).decode("ascii", "replace")
    signature = leaf(1)[0]
    family = (signature >> 8) & 0xF
    model = (signature >> 4) & 0xF
    if family in (6, 15):
        model += ((signature >> 16) & 0xF) << 4
    if family == 15:
        family += (signature >> 20) & 0xFF
    features, basic = (leaf(7)[1] if highest >= 7 else 0), leaf(1)[2]
    # CPUID.7:EBX bits 16 and 5, CPUID.1:ECX bits 28 and 19: the sets oneDNN chooses its kernels by.
    isa = next((name for name, present in (("avx512f", features >> 16), ("avx2", features >> 5),
                                            ("avx", basic >> 28), ("sse4_1", basic >> 19)) if present & 1), None)
    brand = b""
    if leaf(0x80000000)[0] >= 0x80000004:
        brand = b"".join(struct.pack("<IIII", *leaf(number)) for number in (0x80000002, 0x80000003, 0x80000004))
    return {"vendor": vendor, "brand": brand.split(b"\0")[0].decode("ascii", "replace").strip(),
            "family": family, "model": model, "stepping": signature & 0xF,
            "isa": isa}


def _estimates(estimate) -> dict:
    """rcpps and rsqrtps over every table entry: their fingerprint, and whether they are exact."""
    reciprocals, square_roots = [], []
    for start in range(0, len(_TABLE_INPUTS), 4):
        inputs = (ctypes.c_float * 4)(*_TABLE_INPUTS[start:start + 4])
        outputs = (ctypes.c_float * 8)()
        estimate(inputs, outputs)
        reciprocals += outputs[:4]
        square_roots += outputs[4:]
    third = (ctypes.c_float * 4)(3.0, 3.0, 3.0, 3.0)
    outputs = (ctypes.c_float * 8)()
    estimate(third, outputs)
    packed = struct.pack(f"<{2 * len(reciprocals)}f", *reciprocals, *square_roots)
    # QEMU rounds every reciprocal correctly (its square roots it rounds twice, so only the former are checked).
    exact = all(_float32(1 / x) == r for x, r in zip(_TABLE_INPUTS, reciprocals))
    return {"rcpps_of_3": struct.pack(">f", outputs[0]).hex(), "rsqrtps_of_3": struct.pack(">f", outputs[4]).hex(),
            "estimates": hashlib.sha256(packed).hexdigest()[:8], "estimates_exact": exact}


def _float32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


# The executable pages stay mapped for the life of the process: ctypes calls into them.
_PAGES: list = []


def _function(code: bytes, result, *arguments):
    """A ctypes function running `code` from a fresh executable page."""
    if sys.platform == "win32":
        kernel32 = ctypes.windll.kernel32
        kernel32.VirtualAlloc.restype = ctypes.c_void_p
        kernel32.VirtualAlloc.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint32)
        address = kernel32.VirtualAlloc(None, len(code), 0x3000, 0x40)  # MEM_COMMIT|MEM_RESERVE, EXECUTE_READWRITE
        if not address:
            raise OSError("VirtualAlloc refused executable memory")
        ctypes.memmove(address, code, len(code))
    else:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        _PAGES.append(page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(result, *arguments)(address)
