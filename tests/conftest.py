import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory, model_dir):
    """model_dir of a family (llama, qwen2, each made on first use; gemma: the session's model_dir)."""
    made = {"gemma": model_dir}

    def of(family):
        if family not in made:
            made[family] = make_model_dir(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return made[family]

    return of


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from peftbench.model import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture()
def study_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture()
def demo_config():
    from peftbench.config import load_config

    return copy.deepcopy(load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml"))


def pytest_terminal_summary(terminalreporter):
    """Where the files are that tests kept for a person to look at (record_property("artifact", path))."""
    kept = [value for reports in terminalreporter.stats.values() for report in reports
            for name, value in getattr(report, "user_properties", ()) if name == "artifact"]
    for path in dict.fromkeys(kept):
        terminalreporter.write_line(f"artifact kept: {path}")
