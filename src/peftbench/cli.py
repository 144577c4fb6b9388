"""`peftbench <step> ...`: every workflow step as a command, usable without Snakemake."""
import importlib
import logging
import sys

from peftbench.errors import UserError

STEPS = {
    "prepare-model": "peftbench.model",
    "prepare-data": "peftbench.data",
    "demo-data": "peftbench.demo_data",
    "train": "peftbench.train",
    "generate": "peftbench.generate",
    "score": "peftbench.score",
    "compare": "peftbench.compare",
    "report": "peftbench.report",
    "check-config": "peftbench.config",
}
# Steps that run on a GPU: each claims its own free card before torch loads (see peftbench/gpus.py).
GPU_STEPS = {"train", "generate"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STEPS:
        print(f"usage: peftbench {{{','.join(STEPS)}}} [--help]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[0] in GPU_STEPS:
        from peftbench.gpus import claim_gpu

        claim_gpu()  # the claim, an open lock file, lasts until this process ends
    module = importlib.import_module(STEPS[argv[0]])
    try:
        module.main(argv[1:])
    except UserError as error:
        print(f"peftbench {argv[0]}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
