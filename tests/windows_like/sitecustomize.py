"""Python on this Linux machine with what Windows' Python lacks taken away: tests/test_windows_like.py's state.

With this folder first on PYTHONPATH, in every Python started (pytest, and the
`invoke` it runs) the lab's modules find no `fcntl`, `resource`, `pwd` or `grp`
to import, and nothing has `signal.SIGALRM` or `signal.setitimer`, as on
Windows. (`os.killpg` stays: tests use it to play Ctrl-C on a process group;
tests/test_windows_like.py finds the lab's use of it in the source.)
The lab's lock module (classifier.machinery.files) gets an `msvcrt` whose
`locking` behaves as Microsoft documents it (LK_LOCK: ten tries a second apart,
then OSError EDEADLOCK; LK_NBLCK: one try; LK_UNLCK), made of the Linux
kernel's flock through ctypes, so that the Windows lock code runs here. Only
that module sees it: the standard library and other packages take an
importable msvcrt to mean Windows (subprocess would then look for _winapi).
Nothing else changes: the platform is still Linux.
"""

import builtins
import ctypes
import errno
import importlib.abc
import importlib.machinery
import signal
import sys
import time
import types

UNIX_ONLY_MODULES = ("fcntl", "resource", "pwd", "grp")
UNIX_ONLY_NAMES = {signal: ("SIGALRM", "setitimer", "ITIMER_REAL")}


LOCK_MODULE = "classifier.machinery.files"


def _lab_import(name, globals=None, locals=None, fromlist=(), level=0):
    """`import` as the lab's modules (classifier/, tasks.py) meet it: no Unix-only module, cached or not.

    Other packages on this Linux machine take their Linux paths (psutil imports
    `resource` here, its Windows module on Windows); what is tested is the lab.
    """
    importer = (globals or {}).get("__name__", "")
    if level == 0 and name.split(".")[0] in UNIX_ONLY_MODULES and (
            importer == "tasks" or importer.split(".")[0] == "classifier"):
        raise ModuleNotFoundError(f"No module named {name!r} (Windows has none)", name=name)
    return _import(name, globals, locals, fromlist, level)


class _WindowsLike(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """msvcrt for the lab's lock module only, while it is being imported."""

    serving_msvcrt = False

    def find_spec(self, name, path=None, target=None):
        if name == "msvcrt" and self.serving_msvcrt:
            return importlib.machinery.ModuleSpec(name, self)
        if name == LOCK_MODULE:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
            spec.loader = _ServingMsvcrt(spec.loader, self)
            return spec
        return None

    def create_module(self, spec):
        return _fake_msvcrt()

    def exec_module(self, module):
        pass


class _ServingMsvcrt(importlib.abc.Loader):
    """The lock module's own loader, with msvcrt importable while it runs and gone from sys.modules after."""

    def __init__(self, loader, finder: _WindowsLike):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.finder.serving_msvcrt = True
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.serving_msvcrt = False
            sys.modules.pop("msvcrt", None)


def _fake_msvcrt() -> types.ModuleType:
    libc = ctypes.CDLL(None, use_errno=True)
    lock_ex, lock_nb, lock_un = 2, 4, 8  # <sys/file.h>

    def locking(fd: int, mode: int, nbytes: int) -> None:
        if mode == module.LK_UNLCK:
            libc.flock(fd, lock_un)
            return
        for attempt in range(10 if mode == module.LK_LOCK else 1):
            if libc.flock(fd, lock_ex | lock_nb) == 0:
                return
            if attempt < 9 and mode == module.LK_LOCK:
                time.sleep(1)
        raise OSError(errno.EDEADLOCK, "Resource deadlock avoided")

    module = types.ModuleType("msvcrt", "Windows' msvcrt.locking, as documented, over flock (tests only)")
    module.LK_UNLCK, module.LK_LOCK, module.LK_NBLCK, module.LK_RLCK, module.LK_NBRLCK = 0, 1, 2, 3, 4
    module.locking = locking
    return module


_import, builtins.__import__ = builtins.__import__, _lab_import
sys.meta_path.insert(0, _WindowsLike())
for _module, _names in UNIX_ONLY_NAMES.items():
    for _attribute in _names:
        if hasattr(_module, _attribute):
            delattr(_module, _attribute)
