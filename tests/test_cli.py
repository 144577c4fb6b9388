"""`peftbench --help` says what each step does, and every step's options say what they are."""
import argparse

import pytest

from peftbench import cli


def test_the_overview_lists_every_step_with_its_purpose(capsys):
    assert cli.main(["--help"]) == 0
    overview = capsys.readouterr().out
    for step, (_, purpose) in cli.STEPS.items():
        assert f"  {step:<14} {purpose}" in overview


@pytest.mark.parametrize("step", list(cli.STEPS))
def test_every_option_of_every_step_has_help(step, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    undocumented = []
    add_argument = argparse.ArgumentParser.add_argument

    def recording_add_argument(self, *names, **options):
        if not options.get("help") and names[0] not in ("-h", "--help"):
            undocumented.append(names[0])
        return add_argument(self, *names, **options)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", recording_add_argument)
    with pytest.raises(SystemExit) as printed:  # argparse exits once it has printed the help
        cli.main([step, "--help"])
    assert printed.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: peftbench {step} "), usage[:200]
    assert not undocumented, f"peftbench {step}: options without help: {undocumented}"
