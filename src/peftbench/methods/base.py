"""base: the untrained model, the baseline every method is compared to."""
NAME = "base"
SUMMARY = "no training: the model as downloaded"
MEMORY = "not trained"
TRAINS = False


def quantization(settings):
    return None


def lora_targets(settings):
    return []


def full_rank_targets(settings):
    return []
