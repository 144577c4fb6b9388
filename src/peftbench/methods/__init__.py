"""The registry of kinds: what a variant of the config can be. A new kind is one module here plus its name
in KIND_MODULES; the config check, the CLI and the tests all read this registry. Any other method of peft that
adapts layers (loha, lokr, ia3, vera, oft, ...) is a kind too, without a module of its own (peft_kinds.py):
`find_kind` and METHODS[name] build it from peft's config class.

A kind declares what it changes in the base model, and trainable.py does the rest:
  NAME, SUMMARY, MEMORY          its name in configs, a one-line description and where its memory goes (report)
  TRAINS                         False for the untrained baseline
  DEFAULTS                       every setting with its default (a variant gives only what differs)
  SETTINGS                       JSON-schema properties of those settings, checked when the config loads
  LEARNING_RATES                 (optional) its settings that are learning rates, the main one (`lr`) first:
                                 a sweep scales them together (default: ("lr",))
  PEFT_KEYWORDS                  (optional) True: settings it does not name go to its peft config class
  quantization(settings)         a BitsAndBytesConfig for the frozen base weights, or None
  peft_config(settings)          the peft config of its adapters, or None
  full_rank_targets(settings)    leaf module names whose weights train full-rank ([] for none; "*": every weight)
  optimizer(groups, settings, training)  the torch optimizer over a ParamGroups
"""
import importlib

from peftbench.methods import peft_kinds

# peftbench's own kinds, one module each, in the order the docs list them: a new kind's module name goes here.
KIND_MODULES = ["base", "lora", "qlora", "galore", "hybrid", "full"]
KINDS = {module.NAME: module for module in (importlib.import_module(f"peftbench.methods.{name}")
                                            for name in KIND_MODULES)}
TRAINED_KINDS = [name for name, kind in KINDS.items() if kind.TRAINS]


class _Kinds(dict):
    """KINDS, where a missing name is looked up among peft's methods."""

    def __missing__(self, name):
        found = peft_kinds.kind(name)
        if found is None:
            raise KeyError(name)
        self[name] = found
        return found


METHODS = _Kinds(KINDS)  # the name the training code and the benchmarks use


def find_kind(name):
    """peftbench's kind of that name, else peft's method of that name as a kind (built once), else None."""
    try:
        return METHODS[name]
    except KeyError:
        return None
