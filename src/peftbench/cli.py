"""`peftbench <step> ...`: every workflow step as a command, usable without Snakemake.

`--log FILE` (any step, as the workflow's rules pass it): everything the step and its libraries print goes
to FILE, and only the step's one-line error, if it fails, also reaches the terminal, where Snakemake
shows it above its own "check log file(s)" message.
"""
import importlib
import logging
import os
import sys
import traceback

from peftbench.errors import UserError

STEPS = {
    "prepare-model": ("peftbench.model", "make the base model a local Hugging Face folder (model.json)"),
    "prepare-data": ("peftbench.data", "sample, normalize and split the data sources (train/validation/test)"),
    "demo-data": ("peftbench.demo_data", "write the offline demo's instruction data from Python's docs"),
    "train": ("peftbench.train", "fine-tune one method with one seed, resumable"),
    "select-rate": ("peftbench.tuning:select_main", "choose a variant's learning rate from its sweep, on "
                                                    "validation loss"),
    "adopt-tuned": ("peftbench.tuning:adopt_main", "make the sweep's run at the chosen rate a final run"),
    "generate": ("peftbench.generate", "answer every test prompt greedily, resumable"),
    "general-text": ("peftbench.forgetting:prepare_main", "draw the general-text passages forgetting is measured on"),
    "general-loss": ("peftbench.forgetting:loss_main", "one model's loss on the general text (forgetting)"),
    "score": ("peftbench.score", "BLEU-4 and ROUGE-L of one run's answers"),
    "compare": ("peftbench.compare", "paired bootstrap over every run's scores"),
    "report": ("peftbench.report", "write report.md, report.html and the plots"),
    "check-config": ("peftbench.config", "validate config files against the schema"),
}
# Steps that run on a GPU: each claims its own free card before torch loads (see peftbench/gpus.py).
GPU_STEPS = {"train", "generate", "general-loss"}


def usage():
    lines = [f"  {name:<14} {help_text}" for name, (_, help_text) in STEPS.items()]
    return "\n".join(["usage: peftbench <step> [--log FILE] [options]   (peftbench <step> --help)", "",
                      "steps:", *lines])


def pop_log_path(argv):
    """argv without `--log FILE`, and FILE (None when absent)."""
    if "--log" not in argv:
        return argv, None
    at = argv.index("--log")
    if at + 1 >= len(argv):
        raise SystemExit("peftbench: --log needs a file")
    return argv[:at] + argv[at + 2:], argv[at + 1]


def redirect_output(log_path):
    """Point this process's stdout and stderr (Python's and native libraries' alike) at log_path; return a
    stream on the original stderr, for the one line the user must see."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return console


def drop_understood_library_messages():
    """Library messages that ask for an action that does not apply here, dropped at their source (each one a
    filter on the logger that emits it, so every other message of that library still reaches the log)."""
    # bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a 4-bit kernel from the Hugging Face hub through the
    # `kernels` package and, failing, asks to `pip install kernels`; it then runs its own CPU kernel, which is the
    # one every CPU result of peftbench was measured with (and offline, the hub cannot be reached anyway).
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in STEPS:
        print(usage(), file=sys.stderr)
        return 2
    step, (module_name, help_text) = argv[0], STEPS[argv[0]]
    argv, log_path = pop_log_path(argv[1:])
    console = redirect_output(log_path) if log_path else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    drop_understood_library_messages()
    if step in GPU_STEPS:
        from peftbench.gpus import claim_gpu

        claim_gpu()  # the claim, an open lock file, lasts until this process ends
    module_name, _, function = module_name.partition(":")
    step_main = getattr(importlib.import_module(module_name), function or "main")
    sys.argv[0] = f"peftbench {step}"  # argparse's usage line names the step
    try:
        step_main(argv)
    except UserError as error:
        line = f"peftbench {step}: error: {error}"
        print(line, file=sys.stderr)
        if console:
            print(line, file=console)
        return 1
    except Exception as error:  # noqa: BLE001 -- a bug or an unforeseen input: the traceback goes to the log
        if not console:
            raise
        traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"peftbench {step}: unexpected {type(error).__name__}: {first} (traceback in {log_path})",
              file=console)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
