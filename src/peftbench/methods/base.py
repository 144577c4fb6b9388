"""base: the untrained model, the baseline every variant is compared to."""
NAME = "base"
SUMMARY = "no training: the model as downloaded"
MEMORY = "not trained"
TRAINS = False
DEFAULTS = {}
SETTINGS = {}


def quantization(settings):
    return None


def peft_config(settings):
    return None


def full_rank_targets(settings):
    return []
