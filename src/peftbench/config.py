"""Load and validate the configuration: one-line errors that name the offending key."""
import functools
from pathlib import Path

import jsonschema
import yaml

from peftbench.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


# Keys that take one of several forms: what to give, when the value is none of them.
ONE_OF = {"tuning": "give off, or {multiples: [...], grids: {variant: [rates]}}",
          "forgetting": "give off, or {text: ..., passages: N, max_length: L}",
          "forgetting.text": "give builtin, a local .txt or .jsonl file, or {name, hub, split, config, revision}"}


def _one_of_message(error, config):
    """(key, message) for a key of ONE_OF: when its value is an object (the form it meant to take), what is
    wrong inside it, however deep; else what to give."""
    while True:
        where = _key_path(error)
        value = functools.reduce(lambda v, k: v[k], error.absolute_path, config)
        if not isinstance(value, dict) or not error.context:
            return where, ONE_OF[where]
        inner = min(error.context, key=lambda e: (e.validator in ("enum", "type"), len(e.absolute_path)))
        if inner.validator != "oneOf" or _key_path(inner) not in ONE_OF:
            return _key_path(inner), inner.message.replace("Additional properties are not allowed", "unknown key")
        error = inner


def validate_config(config: dict) -> dict:
    """Raise UserError naming the first bad key; return the config unchanged when it is valid."""
    from peftbench.variants import check_old_style

    check_old_style(config)  # before the schema, which would only say "unknown key"
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        error = errors[0]
        message = error.message
        if error.validator == "additionalProperties":
            message = message.replace("Additional properties are not allowed", "unknown key")
        elif error.validator == "oneOf" and _key_path(error) in ONE_OF:
            where, message = _one_of_message(error, config)
            raise UserError(f"config error at {where}: {message} (see {SCHEMA_PATH.name})")
        elif error.validator == "oneOf":
            message = "give exactly one of hub, builtin or files"
        raise UserError(f"config error at {_key_path(error)}: {message} (see {SCHEMA_PATH.name})")
    from peftbench.tuning import grids
    from peftbench.variants import resolve

    grids(config, resolve(config))  # every compared variant's kind and settings, and the tuning grids
    return config


def load_config(*paths) -> dict:
    """Read config files in order, later ones overlaid on earlier ones (like snakemake --configfile)."""
    from snakemake.utils import update_config

    config: dict = {}
    for path in paths:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="check config files (later ones overlay earlier ones)")
    parser.add_argument("configs", nargs="+", help="config.yaml, then any overlays")
    args = parser.parse_args(argv)
    load_config(*args.configs)
    print("config OK")
