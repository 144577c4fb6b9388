"""The one switch for tests that install system packages: PEFTBENCH_TEST_INSTALL=1 (CI sets it).

Without it, a test that would have to install something skips, in one line saying what it would install
and how to opt in; with it, the test installs what is missing and runs. A test whose packages are already
there runs either way.
"""
import os
import shutil
import sys

import pytest

SWITCH = "PEFTBENCH_TEST_INSTALL"


def opted_in():
    return os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes")


def cannot_install():
    """What installing Debian packages needs that this machine lacks, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "root on Linux"
    if not shutil.which("apt-get"):
        return "apt-get (Debian or Ubuntu)"
    return None


def skip_unless_opted_in(packages, by):
    """Skip unless the user opted in to installs: `packages` (what is missing) would be installed by `by`."""
    reason = cannot_install()
    if reason:
        pytest.skip(f"{packages}: not installed, and installing needs {reason}")
    if not opted_in():
        pytest.skip(f"would install {packages} ({by}): set {SWITCH}=1 to let the tests install system packages")
