"""Variants: what a config compares. Each has a name (its output folder and its row in the report), a kind
(a module of peftbench.methods) and settings: the kind's defaults overlaid with what the variant gives.

    compare: [base, lora, lora-r64, dora]
    variants:
      base: {kind: base}
      lora: {kind: lora}
      lora-r64: {kind: lora, r: 64, lora_alpha: 128}
      dora: {kind: lora, use_dora: true}

A variant's settings fall in two parts. `settings` change what is learned: they are a train job's tracked
parameters, so changing one variant's reruns that variant's jobs and nothing else. `knobs` only trade time
for memory and leave the result unchanged (tests/test_methods.py trains with each and without, to the same
weights): a finished run is not retrained when one changes.
"""
import json
import re
from collections import namedtuple

from peftbench.errors import UserError
from peftbench.methods import KINDS, find_kind, peft_kinds

Variant = namedtuple("Variant", ["name", "kind", "settings", "knobs"])
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"  # a folder name, and no '/' to confuse with a run's seed
# The memory knobs every trained kind takes, with their defaults.
KNOBS = {
    "checkpoint_layers": {"type": "integer", "minimum": 0, "default": 0,
                          "description": "how many decoder layers, from the first, recompute their whole forward "
                                         "in backward; training.gradient_checkpointing: true checkpoints them all"},
    "recompute_elementwise": {"type": "boolean", "default": False,
                              "description": "the other layers keep only matrix-product and attention outputs "
                                             "for backward and recompute the elementwise work between them"},
    "micro_batch_tokens": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "each batch runs forward and backward in groups of at most this many "
                                          "tokens (an example longer than that alone), their gradients summed "
                                          "into one optimizer step; 0: the whole batch at once"},
}
# The training section's keys that only change how a run goes (speed, memory, logging, checkpoint
# frequency), not what it learns: like the knobs, they are not tracked.
TRAINING_RUN_KEYS = ("gradient_checkpointing", "compile", "cuda_graphs", "log_every", "checkpoint_every", "eval_every")
OLD_STYLE = ("config error: `methods` and `method_settings` are replaced by `compare` (the variants to run, in "
             "order) and `variants` (each a kind and its settings, e.g. lora: {kind: lora, lr: 2.0e-4}); LoRA's "
             "alpha and dropout are now lora_alpha and lora_dropout, and training.checkpoint_layers / "
             "recompute_elementwise are per variant: see docs/variants.md")


def _schema(kind):
    properties = dict(kind.SETTINGS)
    if kind.TRAINS:
        properties.update({name: {k: v for k, v in spec.items() if k != "default"} for name, spec in KNOBS.items()})
    return {"type": "object", "properties": {"kind": {"const": kind.NAME}, **properties},
            "additionalProperties": bool(getattr(kind, "PEFT_KEYWORDS", False))}


def check_old_style(config):
    training = config.get("training", {})
    if "methods" in config or "method_settings" in config or "checkpoint_layers" in training \
            or "recompute_elementwise" in training:
        raise UserError(OLD_STYLE)


def resolve(config) -> dict:
    """{name: Variant} for every variant the config compares, in the config's order; UserError (one line)
    naming the variant and the key for anything wrong."""
    check_old_style(config)
    definitions = config["variants"]
    resolved = {}
    for name in config["compare"]:
        if name not in definitions:
            raise UserError(f"config error at compare: {name!r} is not defined under variants "
                            f"(defined: {', '.join(definitions)})")
        resolved[name] = resolve_one(name, definitions[name])
    return resolved


def resolve_one(name, definition) -> Variant:
    if not re.match(NAME_PATTERN, name):
        raise UserError(f"config error at variants.{name}: a variant's name is a folder name: letters, digits, "
                        "and . _ + - after the first character")
    if not isinstance(definition, dict) or "kind" not in definition:
        raise UserError(f"config error at variants.{name}: give its kind, e.g. {{kind: lora}} "
                        f"(kinds: {', '.join(KINDS)})")
    kind = find_kind(definition["kind"])
    if kind is None:
        if peft_kinds.is_prompt_method(definition["kind"]):
            raise UserError(f"config error at variants.{name}.kind: peft's {definition['kind']} learns prompts "
                            "or routes other adapters, and does not adapt the model's layers: peftbench compares "
                            "methods that do (kinds: " + ", ".join(KINDS) + ", or any of peft's "
                            + ", ".join(peft_kinds.names()) + ")")
        raise UserError(f"config error at variants.{name}.kind: unknown kind {definition['kind']!r} "
                        f"(kinds: {', '.join(KINDS)}, or a peft method: {', '.join(peft_kinds.names())})")
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(_schema(kind)).iter_errors(definition),
                    key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        error = errors[0]
        where = ".".join(["variants", name, *map(str, error.absolute_path)])
        message = error.message
        if error.validator == "additionalProperties":
            allowed = ", ".join([*kind.SETTINGS, *(KNOBS if kind.TRAINS else [])])
            message = message.replace("Additional properties are not allowed", "unknown setting") + \
                f" (kind {kind.NAME} takes: {allowed or 'nothing'})"
        raise UserError(f"config error at {where}: {message}")
    given = {k: v for k, v in definition.items() if k != "kind"}
    knobs = {k: given.pop(k, spec["default"]) for k, spec in KNOBS.items()} if kind.TRAINS else {}
    return Variant(name, kind.NAME, {**kind.DEFAULTS, **given}, knobs)


def check_with_peft(variants) -> None:
    """Build each variant's peft config, so that a keyword its config class does not take, or a value peft
    refuses, stops the run with one line naming the variant before anything trains. (Imports peft: run when
    a workflow starts, and by the train step, not on every dry run.)"""
    for variant in variants.values():
        kind = find_kind(variant.kind)
        if not kind.TRAINS:
            continue
        try:
            kind.peft_config(variant.settings)
        except (TypeError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"config error at variants.{variant.name}: peft refuses its settings for kind "
                            f"{variant.kind} ({first}): see that method's config class in peft's documentation")


def differing_settings(variant: Variant) -> dict:
    """The settings in which a variant differs from its kind's defaults (what its report row names)."""
    defaults = find_kind(variant.kind).DEFAULTS
    return {k: v for k, v in variant.settings.items() if k not in defaults or defaults[k] != v}


def learning_rate_keys(kind) -> tuple:
    """A trained kind's settings that are learning rates, its main one (`lr`) first."""
    return tuple(getattr(kind, "LEARNING_RATES", ("lr",)))


def at_rate(kind, settings: dict, lr: float) -> dict:
    """The settings with the main learning rate set to `lr` and any other rate of the kind scaled by the same
    factor (the hybrid's GaLore rate keeps its ratio to the LoRA rate)."""
    keys = learning_rate_keys(kind)
    factor = lr / settings[keys[0]]
    return {**settings, keys[0]: lr, **{k: settings[k] * factor for k in keys[1:]}}


def learned_training(training: dict) -> dict:
    """The training section without the keys that only change how a run goes (nor a variant's knobs)."""
    return {k: v for k, v in training.items() if k not in TRAINING_RUN_KEYS and k not in KNOBS}


def run_knobs(variant: Variant, training: dict) -> dict:
    """What changes only how this variant's run goes: its memory knobs and the training section's run keys."""
    return {**{k: training[k] for k in TRAINING_RUN_KEYS if k in training}, **variant.knobs}


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True)
