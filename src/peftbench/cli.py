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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STEPS:
        print(f"usage: peftbench {{{','.join(STEPS)}}} [--help]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(STEPS[argv[0]])
    try:
        module.main(argv[1:])
    except UserError as error:
        print(f"peftbench {argv[0]}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
