"""Every other method of peft that adapts the model's layers, without code: a variant whose kind is the
name of a peft method (a folder of peft.tuners: loha, lokr, ia3, vera, oft, boft, fourierft, ...), e.g.

    loha-r8: {kind: loha, r: 8, alpha: 16}

Every setting but `lr` is a keyword of that method's config class (LoHaConfig, ...), passed as written;
the defaults put it on every projection. The method's adapters are merged into the weights for scoring
where peft can merge them, and scored unmerged where it cannot. Its config class is read from the installed
peft, so a newer peft brings its new methods along.
"""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# peft methods that do not adapt the model's layers (they learn prompts, or mix or route other adapters):
# a variant of one of them stops at the config check.
NOT_LAYER_ADAPTERS = {"adaption_prompt", "cartridge", "cpt", "mixed", "multitask_prompt_tuning", "p_tuning",
                      "poly", "prefix_tuning", "prompt_tuning", "trainable_tokens", "xlora"}
# Where a method's own defaults do not fit "every projection" (IA3 scales the MLP's input, not its output).
DEFAULTS = {
    "ia3": {"target_modules": PROJECTIONS, "feedforward_modules": ["gate_proj", "up_proj", "down_proj"],
            "lr": 1.0e-3},
}
SETTINGS = {
    "target_modules": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    # any other keyword of the method's config class: checked by peft when the variant is built
}


def _tuners_dir():
    spec = importlib.util.find_spec("peft")  # finds the package without importing it (and torch with it)
    return Path(spec.submodule_search_locations[0]) / "tuners" if spec else None


def names():
    """The peft methods a variant can name, from the installed peft's folders."""
    folder = _tuners_dir()
    if folder is None:
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")
                  and p.name not in NOT_LAYER_ADAPTERS)


def is_prompt_method(name):
    return name in NOT_LAYER_ADAPTERS


def kind(name):
    """The kind for peft method `name` (a module-like namespace, as peftbench.methods' modules), or None."""
    if name not in names():
        return None

    def config_class():
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        return PEFT_TYPE_TO_CONFIG_MAPPING[name.upper()]

    def peft_config(settings):
        return config_class()(**{k: v for k, v in settings.items() if k != "lr"}, task_type="CAUSAL_LM")

    def optimizer(groups, settings, training):
        return torch.optim.AdamW(
            [{"params": groups.adapter, "lr": settings["lr"], "weight_decay": training["weight_decay"]},
             {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0}])

    return SimpleNamespace(
        NAME=name,
        SUMMARY=f"peft's {name} adapters (peft {name.upper()} config, as written) on a frozen base",
        MEMORY="the base weights (frozen, in the model's dtype) + the method's adapters and their Adam state",
        TRAINS=True,
        DEFAULTS=DEFAULTS.get(name, {"target_modules": PROJECTIONS, "lr": 2.0e-4}),
        SETTINGS=SETTINGS,
        PEFT_KEYWORDS=True,
        quantization=lambda settings: None,
        peft_config=peft_config,
        full_rank_targets=lambda settings: [],
        optimizer=optimizer,
    )
