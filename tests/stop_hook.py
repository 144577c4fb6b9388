"""tests/test_kill_resume.py copies this file as sitecustomize.py into a folder it puts first on the PYTHONPATH
of the Snakemake run it means to kill, so every Python process of that run (Snakemake and each `peftbench`
step) imports it at startup. Without PEFTBENCH_TEST_STOP_DIR it does nothing at all.

With it, once peftbench.checkpoint (resp. peftbench.generate, peftbench.forgetting) is imported,
Checkpoints.save (resp. the module's write_json, which writes each generation chunk, or general_loss.json)
is wrapped: right after the planned checkpoint step
of a planned method (resp. the planned chunk of the planned run) is written, the process writes a marker
file in PEFTBENCH_TEST_STOP_DIR naming what it reached, then stops itself with SIGSTOP. The test waits for
the marker and SIGKILLs the process group, so the kill lands exactly there however slowly the test polls.

The plan, as JSON in the environment:
  PEFTBENCH_TEST_STOP_RESULTS   the study's output_dir (absolute)
  PEFTBENCH_TEST_STOP_TRAIN     {"<method>": <step>, ...}: stop after saving <results>/<method>/seed0/
                                .checkpoints/<key>/step-<step:08d>; a key with a "/" names the run's
                                folder itself (a sweep's "tuning/<method>/lr<rate>")
  PEFTBENCH_TEST_STOP_GENERATE  {"run": "base" | "<method>/seed0", "first": <n>}: stop after writing
                                <results>/<run>/.generations.jsonl.chunks/<key>/<n:08d>.json
  PEFTBENCH_TEST_STOP_GENERAL_LOSS  {"run": "base" | "<method>/seed0"}: stop right after writing
                                <results>/<run>/general_loss.json (peftbench.forgetting's write_json), before
                                the job ends: Snakemake has not seen it finish
"""
import functools
import importlib.abc
import json
import os
import re
import signal
import sys
from pathlib import Path

KEY = re.compile(r"^[0-9a-f]{16}$")  # a checkpoint settings key, and a generation resume key


def _stop(kind, name, **details):
    """Write the marker <kind>-<name>.json whole (the test only sees it once it is complete), then freeze."""
    stop_dir = Path(os.environ["PEFTBENCH_TEST_STOP_DIR"])
    marker = stop_dir / f"{kind}-{name.replace('/', '_')}.json"
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"kind": kind, "name": name, **details,
                               "pid": os.getpid(), "pgid": os.getpgid(0)}))
    os.replace(tmp, marker)
    os.kill(os.getpid(), signal.SIGSTOP)


def _results():
    return Path(os.environ["PEFTBENCH_TEST_STOP_RESULTS"]).resolve()


def _patch_checkpoint(module):
    plan = json.loads(os.environ.get("PEFTBENCH_TEST_STOP_TRAIN") or "{}")
    save = module.Checkpoints.save

    @functools.wraps(save)
    def save_then_maybe_stop(self, step, *args, **kwargs):
        result = save(self, step, *args, **kwargs)
        path = Path(self.path(step)).resolve()  # <results>/<method>/seed0/.checkpoints/<key>/step-<8 digits>
        for method, planned in plan.items():
            folder = method if "/" in method else f"{method}/seed0"
            if (step == planned and path.name == f"step-{planned:08d}" and KEY.match(path.parent.name)
                    and path.parent.parent == _results() / folder / ".checkpoints" and path.is_dir()):
                _stop("train", method, step=step, path=str(path))
        return result

    module.Checkpoints.save = save_then_maybe_stop


def _patch_generate(module):
    plan = json.loads(os.environ.get("PEFTBENCH_TEST_STOP_GENERATE") or "null")
    write_json = module.write_json

    @functools.wraps(write_json)
    def write_json_then_maybe_stop(path, *args, **kwargs):
        result = write_json(path, *args, **kwargs)
        if plan:
            chunk = Path(path).resolve()  # <results>/<run>/.generations.jsonl.chunks/<key>/<first:08d>.json
            if (chunk.name == f"{plan['first']:08d}.json" and KEY.match(chunk.parent.name)
                    and chunk.parent.parent == _results() / plan["run"] / ".generations.jsonl.chunks"
                    and chunk.is_file()):
                _stop("generate", plan["run"], first=plan["first"], path=str(chunk))
        return result

    module.write_json = write_json_then_maybe_stop


def _patch_forgetting(module):
    plan = json.loads(os.environ.get("PEFTBENCH_TEST_STOP_GENERAL_LOSS") or "null")
    write_json = module.write_json

    @functools.wraps(write_json)
    def write_json_then_maybe_stop(path, *args, **kwargs):
        result = write_json(path, *args, **kwargs)
        written = Path(path).resolve()
        if plan and written == _results() / plan["run"] / "general_loss.json" and written.is_file():
            _stop("general_loss", plan["run"], path=str(written), mtime_ns=written.stat().st_mtime_ns)
        return result

    module.write_json = write_json_then_maybe_stop


PATCHES = {"peftbench.checkpoint": _patch_checkpoint, "peftbench.generate": _patch_generate,
           "peftbench.forgetting": _patch_forgetting}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds a module in PATCHES through the other finders, and patches it right after it executes."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_then_patch  # this spec's own loader object
        return spec


def _chain_next_sitecustomize():
    """Run the sitecustomize this file shadows, if the Python has one further down sys.path."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get("PEFTBENCH_TEST_STOP_DIR"):
    sys.meta_path.insert(0, _PatchAfterImport())
_chain_next_sitecustomize()
