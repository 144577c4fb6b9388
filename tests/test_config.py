import pytest

from peftbench.config import validate_config
from peftbench.errors import UserError


def test_study_and_demo_configs_are_valid(study_config, demo_config):
    validate_config(study_config)
    assert study_config["model"]["id"] == "google/gemma-3-1b-it"
    assert study_config["methods"] == ["base", "lora", "qlora", "galore", "hybrid"]
    assert [s["train"]["n"] for s in study_config["data"]["sources"]] == [5000] * 3
    assert [s["test"]["n"] for s in study_config["data"]["sources"]] == [2000] * 3
    assert study_config["training"]["epochs"] == 2
    # The overlay switches model, data and output folder but keeps the study's other settings.
    assert demo_config["model"]["source"] == "embedded"
    assert demo_config["output_dir"] != study_config["output_dir"]
    assert demo_config["method_settings"]["lora"]["r"] == study_config["method_settings"]["lora"]["r"]
    # GaLore checkpoints layers to fit the GPU memory target; the CPU demo has memory to spare.
    assert study_config["training"]["checkpoint_layers"] == {"galore": 8}
    assert study_config["training"]["recompute_elementwise"] == ["galore"]
    assert demo_config["training"]["checkpoint_layers"] == {"galore": 0}
    assert demo_config["training"]["recompute_elementwise"] == []


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: c.update(unknown_key=1), "(top level): unknown key"),
        (lambda c: c["training"].update(epochs="two"), "training.epochs"),
        (lambda c: c["methods"].append("dora"), "methods.5"),
        (lambda c: c["method_settings"]["lora"].update(rank=8), "method_settings.lora: unknown key"),
        (lambda c: c["model"].update(dtype="float16"), "model.dtype"),
        (lambda c: c["data"]["sources"][0].pop("hub"), "data.sources.0"),
        (lambda c: c["data"]["sources"][1]["train"].update(n=-5), "data.sources.1.train.n"),
        (lambda c: c["training"].update(checkpoint_layers={"gallore": 10}), "training.checkpoint_layers"),
        (lambda c: c["training"].update(checkpoint_layers={"galore": -1}), "training.checkpoint_layers.galore"),
    ],
)
def test_bad_config_names_the_key_in_one_line(study_config, change, key):
    change(study_config)
    with pytest.raises(UserError) as error:
        validate_config(study_config)
    message = str(error.value)
    assert f"config error at {key}" in message
    assert "\n" not in message


def test_listed_method_needs_settings(study_config):
    del study_config["method_settings"]["galore"]
    with pytest.raises(UserError, match="method 'galore' is listed but has no settings"):
        validate_config(study_config)
