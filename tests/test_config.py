import pytest

from peftbench.config import validate_config
from peftbench.errors import UserError
from peftbench.methods import KINDS
from peftbench.variants import differing_settings, resolve


def test_study_and_demo_configs_are_valid(study_config, demo_config):
    validate_config(study_config)
    assert study_config["model"]["id"] == "google/gemma-3-1b-it"
    variants = resolve(study_config)
    assert list(variants) == study_config["compare"]
    # the study compares every kind, and two kinds with more than one variant
    assert {v.kind for v in variants.values()} == set(KINDS)
    assert [v.name for v in variants.values() if v.kind == "lora"] == ["lora", "lora-r64", "dora"]
    assert differing_settings(variants["dora"]) == {"use_dora": True}
    assert differing_settings(variants["lora-r64"]) == {"r": 64, "lora_alpha": 128}
    assert [s["train"]["n"] for s in study_config["data"]["sources"]] == [5000] * 3
    assert [s["test"]["n"] for s in study_config["data"]["sources"]] == [2000] * 3
    assert study_config["training"]["epochs"] == 2
    # The overlay switches model, data and output folder but keeps the study's other settings.
    assert demo_config["model"]["source"] == "embedded"
    assert demo_config["output_dir"] != study_config["output_dir"]
    demo = resolve(demo_config)
    assert demo["lora"].settings["r"] == variants["lora"].settings["r"]
    # GaLore checkpoints layers to fit the GPU memory target; the CPU demo has memory to spare.
    assert variants["galore"].knobs == {"checkpoint_layers": 8, "recompute_elementwise": True, "micro_batch_tokens": 0}
    assert demo["galore"].knobs == {"checkpoint_layers": 0, "recompute_elementwise": False, "micro_batch_tokens": 0}


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: c.update(unknown_key=1), "(top level): unknown key"),
        (lambda c: c["training"].update(epochs="two"), "training.epochs"),
        (lambda c: c["compare"].append("dora2"), "compare: 'dora2' is not defined under variants"),
        (lambda c: c["variants"]["galore"].update(r=8), "variants.galore: unknown setting"),
        (lambda c: c["variants"]["lora"].update(r=0), "variants.lora.r: 0 is less than the minimum of 1"),
        (lambda c: c["variants"]["dora"].update(kind="doora"), "variants.dora.kind: unknown kind 'doora'"),
        (lambda c: c["variants"]["galore"].update(checkpoint_layers=-1), "variants.galore.checkpoint_layers"),
        (lambda c: c["variants"].update({"a/b": {"kind": "lora"}}) or c["compare"].append("a/b"), "variants.a/b"),
        (lambda c: c["variants"].update(x={"r": 8}) or c["compare"].append("x"), "variants.x: give its kind"),
        (lambda c: c["model"].update(dtype="float16"), "model.dtype"),
        (lambda c: c["data"]["sources"][0].pop("hub"), "data.sources.0"),
        (lambda c: c["data"]["sources"][1]["train"].update(n=-5), "data.sources.1.train.n"),
        (lambda c: c.update(threads=0), "threads: 0 is less than the minimum of 1"),
        (lambda c: c.update(gpu_per_step=2), "gpu_per_step"),
    ],
)
def test_bad_config_names_the_key_in_one_line(study_config, change, key):
    change(study_config)
    with pytest.raises(UserError) as error:
        validate_config(study_config)
    message = str(error.value)
    assert f"config error at {key}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("old", [
    {"methods": ["base", "lora"]},
    {"method_settings": {"lora": {"r": 8}}},
    {"training": {"checkpoint_layers": {"galore": 8}}},
])
def test_an_old_style_config_names_the_migration(study_config, old):
    for key, value in old.items():
        study_config[key] = {**study_config[key], **value} if isinstance(value, dict) and key in study_config else value
    with pytest.raises(UserError) as error:
        validate_config(study_config)
    assert str(error.value).startswith("config error: `methods` and `method_settings` are replaced by `compare`")
    assert "docs/variants.md" in str(error.value)


def test_a_variant_gives_only_what_differs_from_its_kind(study_config):
    study_config["variants"]["tiny"] = {"kind": "galore", "rank": 8}
    study_config["compare"].append("tiny")
    tiny = resolve(study_config)["tiny"]
    assert tiny.settings == {**KINDS["galore"].DEFAULTS, "rank": 8}
    assert tiny.knobs == {"checkpoint_layers": 0, "recompute_elementwise": False, "micro_batch_tokens": 0}
    assert differing_settings(tiny) == {"rank": 8}


def test_any_peft_method_is_a_kind_and_prompt_methods_are_refused(study_config):
    study_config["variants"].update(loha={"kind": "loha", "r": 8}, ia3={"kind": "ia3"},
                                    prompts={"kind": "prompt_tuning"})
    study_config["compare"] += ["loha", "ia3"]
    variants = resolve(study_config)
    assert variants["loha"].settings["r"] == 8 and variants["ia3"].settings["feedforward_modules"]
    study_config["compare"].append("prompts")
    with pytest.raises(UserError) as error:
        resolve(study_config)
    assert str(error.value).startswith("config error at variants.prompts.kind: peft's prompt_tuning learns prompts")


@pytest.mark.parametrize("settings, refused", [
    ({"kind": "loha", "rr": 8}, "unexpected keyword argument 'rr'"),
    ({"kind": "lora", "use_dora": True, "lora_alfa": 16}, "unexpected keyword argument 'lora_alfa'"),
])
def test_peft_checks_each_variants_keywords_with_one_line(study_config, settings, refused):
    from peftbench.variants import check_with_peft

    study_config["variants"]["odd"] = settings
    study_config["compare"] = ["base", "odd"]
    with pytest.raises(UserError) as error:
        check_with_peft(resolve(study_config))
    message = str(error.value)
    assert message.startswith(f"config error at variants.odd: peft refuses its settings for kind {settings['kind']}")
    assert refused in message and "\n" not in message
