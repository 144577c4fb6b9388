"""The opt-in for tests that install system packages (tests/system_installs.py): without it they skip in
one line that says what they would install and how to opt in."""
import pytest

import system_installs


@pytest.fixture()
def installable(monkeypatch):
    monkeypatch.setattr(system_installs, "cannot_install", lambda: None)
    monkeypatch.delenv(system_installs.SWITCH, raising=False)
    return monkeypatch


def test_without_the_switch_a_test_that_would_install_skips_saying_what_and_how(installable):
    with pytest.raises(pytest.skip.Exception) as skipped:
        system_installs.skip_unless_opted_in("chromium", "scripts/install_chromium.sh")
    reason = str(skipped.value)
    assert reason == ("would install chromium (scripts/install_chromium.sh): set PEFTBENCH_TEST_INSTALL=1 to let "
                      "the tests install system packages") and "\n" not in reason


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_with_the_switch_it_goes_on(installable, value):
    installable.setenv(system_installs.SWITCH, value)
    system_installs.skip_unless_opted_in("chromium", "scripts/install_chromium.sh")  # no skip


@pytest.mark.parametrize("value", ["", "0", "no"])
def test_the_switch_off_is_off(installable, value):
    installable.setenv(system_installs.SWITCH, value)
    with pytest.raises(pytest.skip.Exception):
        system_installs.skip_unless_opted_in("chromium", "scripts/install_chromium.sh")


def test_where_nothing_can_be_installed_it_skips_saying_why_even_when_opted_in(monkeypatch):
    monkeypatch.setattr(system_installs, "cannot_install", lambda: "root on Linux")
    monkeypatch.setenv(system_installs.SWITCH, "1")
    with pytest.raises(pytest.skip.Exception, match="^chromium: not installed, and installing needs root on Linux$"):
        system_installs.skip_unless_opted_in("chromium", "scripts/install_chromium.sh")
