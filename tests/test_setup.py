"""setup.sh waits for another apt (a fresh Ubuntu's unattended upgrades) instead of failing at once."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

import pytest

from conftest import ROOT

LISTS_LOCK = "/var/lib/apt/lists/lock"


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(LISTS_LOCK), reason="needs root and apt's lock files")
def test_setup_waits_while_another_apt_holds_its_lock_then_goes_on():
    """setup.sh's wait_for_apt, run while this test holds apt's lists lock as apt-get update does."""
    fd = os.open(LISTS_LOCK, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # what a running apt-get update holds
    try:
        waiting = subprocess.Popen(["bash", "-c", "source ./setup.sh && wait_for_apt && echo went-on"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert waiting.poll() is None, "wait_for_apt returned while the lock was still held"
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and out.strip() == "went-on"
    assert f"another apt is running (it holds {LISTS_LOCK}); waiting for it, up to 600 s" in err


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(LISTS_LOCK), reason="needs root and apt's lock files")
def test_setup_gives_up_with_one_line_when_apt_stays_busy():
    fd = os.open(LISTS_LOCK, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        result = subprocess.run(["bash", "-c", "source ./setup.sh && wait_for_apt"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "APT_WAIT_SECONDS": "3"})
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: apt is still busy after 3 s ({LISTS_LOCK} is held); wait for it to finish")
    assert "Traceback" not in result.stderr
