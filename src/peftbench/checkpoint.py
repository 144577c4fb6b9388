"""Training checkpoints: a killed run resumes exactly where it stopped, and loading one runs no code.

A checkpoint is a folder step-<N>/ holding two files:
  tensors.safetensors  the trained parameters (in their training dtype), every tensor of the optimizer
                       state (of GaLore's projectors, their matrix) and the RNG states
  state.json           everything else: optimizer param groups and scalar state, the projectors' settings,
                       the scheduler, the position in the data order, the loss history so far, and the
                       sha256 of tensors.safetensors (a corrupted checkpoint is detected and skipped)
Nothing is pickled (torch.save would pickle GaLore's projector objects), so loading cannot run code.

Checkpoints live in <root>/<settings key>/, outside Snakemake's declared outputs, which Snakemake deletes
before a job runs. The key hashes every setting that changes what training computes; a folder under
another key is stale and is removed when training starts. The last KEEP checkpoints are kept, so a
corrupted one falls back to the one before.
"""
import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftbench.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

KEEP = 2
FORMAT = 1  # bump when the layout changes: older checkpoints then count as made with other settings
TENSORS, STATE, SETTINGS = "tensors.safetensors", "state.json", "settings.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
KEY_DIR = re.compile(r"^[0-9a-f]{16}$")


def settings_key(settings):
    """A short hash of a JSON-able dict of everything that affects training."""
    return hashlib.sha256(json.dumps([FORMAT, settings], sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _changed_keys(old, new, prefix=""):
    """Dotted names of the settings that differ between two settings dicts (for the stale warning)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".") or "(all)"] if old != new else []
    return [k for key in sorted(set(old) | set(new))
            for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]


# --------------------------------------------------------------------------------- optimizer state

def _projector_class():
    from galore_torch.galore_projector import GaLoreProjector

    return GaLoreProjector


def optimizer_to_safe(optimizer):
    """(tensors, plain JSON) for an optimizer's state_dict; a GaLore projector becomes its matrix plus its
    settings. The matrix's strides are kept: a matmul's rounding may depend on its operand's layout."""
    state_dict = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in state_dict["state"].items():
        plain[str(index)] = scalars = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            elif type(value).__name__ == "GaLoreProjector":
                matrix = value.ortho_matrix
                if matrix is not None and not torch.is_tensor(matrix):
                    raise TypeError(f"GaLore proj_type {value.proj_type!r} is not supported by checkpoints")
                scalars[name] = {"projector": {k: getattr(value, k) for k in
                                               ("rank", "verbose", "update_proj_gap", "scale", "proj_type")}}
                if matrix is not None:
                    tensors[f"{index}.{name}.ortho_matrix"] = matrix
                    scalars[name]["projector"]["stride"] = list(matrix.stride())
            elif isinstance(value, (bool, int, float)):
                scalars[name] = value
            else:  # never silently drop state: resuming would then differ from an uninterrupted run
                raise TypeError(f"optimizer state {name!r} of type {type(value).__name__} cannot be checkpointed")
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _strided_copy(tensor, stride):
    """tensor's values in a fresh tensor with the given strides (what the uninterrupted run had)."""
    if list(tensor.stride()) == list(stride):
        return tensor
    out = torch.empty_strided(tensor.shape, stride, dtype=tensor.dtype, device=tensor.device)
    return out.copy_(tensor)


def load_optimizer(optimizer, tensors, plain):
    """Restore an optimizer saved by optimizer_to_safe: plain state through load_state_dict, then the
    projector objects rebuilt from their settings and matrix."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state, projectors = {}, {}
    for index, scalars in plain["state"].items():
        index = int(index)
        state[index] = {name: value for name, value in scalars.items() if not isinstance(value, dict)}
        for name, value in scalars.items():
            if isinstance(value, dict):
                settings = dict(value["projector"])
                stride = settings.pop("stride", None)
                projectors[(index, name)] = projector = _projector_class()(**settings)
                if stride is not None:
                    matrix = tensors[f"{index}.{name}.ortho_matrix"].to(params[index].device)
                    projector.ortho_matrix = _strided_copy(matrix, stride)
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        if "." not in name:
            state[int(index)][name] = tensor
    # load_state_dict moves each state tensor to its parameter's device and dtype (the step counter aside);
    # the saved values replace them on that device, in the dtype they were saved in: a bf16 weight's
    # float32 master and moments stay float32, unrounded
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    for index, entries in state.items():
        loaded = optimizer.state[params[index]]
        for name, tensor in entries.items():
            if torch.is_tensor(tensor) and tensor.dtype != loaded[name].dtype:
                loaded[name] = tensor.to(loaded[name].device)
    for (index, name), projector in projectors.items():
        optimizer.state[params[index]][name] = projector


# --------------------------------------------------------------------------------- RNG state

def rng_to_safe():
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    plain = {"python": [python_state[0], list(python_state[1]), python_state[2]],
             "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}
    return tensors, plain


def load_rng(tensors, plain):
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


# --------------------------------------------------------------------------------- the folder

def _under(prefix, tensors):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class CheckpointError(Exception):
    """A checkpoint that cannot be used (corrupted, or made with other settings)."""


class Checkpoints:
    """The checkpoints of one training run: <root>/<key>/step-<N>/."""

    def __init__(self, root, settings, keep=KEEP):
        self.root, self.settings, self.keep = Path(root), settings, keep
        self.key = settings_key(settings)
        self.dir = self.root / self.key
        self._remove_stale()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / SETTINGS, {"key": self.key, "settings": settings})
        for leftover in self.dir.glob(".step-*.tmp-*"):  # a save that was killed half-way
            shutil.rmtree(leftover, ignore_errors=True)

    def _remove_stale(self):
        """Remove checkpoint folders of other settings (only folders this module wrote)."""
        if not self.root.is_dir():
            return
        for other in self.root.iterdir():
            if other.name == self.key or not KEY_DIR.match(other.name) or not (other / SETTINGS).exists():
                continue
            try:
                changed = _changed_keys(read_json(other / SETTINGS)["settings"], self.settings)
            except (ValueError, KeyError):
                changed = ["unreadable settings.json"]
            log.warning("checkpoints in %s were made with other settings (%s differ): removed, training "
                        "starts afresh", other, ", ".join(changed[:5]) or "format")
            shutil.rmtree(other)

    def steps(self):
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := STEP_DIR.match(p.name)))

    def path(self, step):
        return self.dir / f"step-{step:08d}"

    def save(self, step, named_params, optimizer, scheduler, progress):
        """Write step-<step>/ whole or not at all; keep the last `keep`."""
        optimizer_tensors, optimizer_plain = optimizer_to_safe(optimizer)
        rng_tensors, rng_plain = rng_to_safe()
        tensors = {f"param/{name}": p for name, p in named_params.items()}
        tensors.update({f"optimizer/{k}": v for k, v in optimizer_tensors.items()})
        tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
        with atomic_dir(self.path(step)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / TENSORS)
            write_json(tmp / STATE, {
                "key": self.key,
                "step": step,
                "sha256": file_sha256(tmp / TENSORS),
                "progress": progress,
                "optimizer": optimizer_plain,
                "scheduler": scheduler.state_dict(),
                "rng": rng_plain,
            })
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)

    def _read(self, step, named_params):
        """The tensors and state of step-<step>, checked against this run; CheckpointError if unusable."""
        folder = self.path(step)
        try:
            state = read_json(folder / STATE)
            if state["key"] != self.key:
                raise CheckpointError(f"made with other settings (key {state['key']}, expected {self.key})")
            if file_sha256(folder / TENSORS) != state["sha256"]:
                raise CheckpointError(f"{TENSORS} does not match its sha256")
            tensors = load_file(folder / TENSORS)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
            raise CheckpointError(f"unreadable ({type(error).__name__}: {error})") from None
        params = _under("param/", tensors)
        if set(params) != set(named_params) or any(
                params[n].shape != p.shape or params[n].dtype != p.dtype for n, p in named_params.items()):
            raise CheckpointError("its parameters do not fit this model")
        return tensors, state

    def resume(self, named_params, optimizer, scheduler):
        """Restore the newest usable checkpoint into the parameters, optimizer, scheduler and RNGs; return its
        progress dict, or None to start from scratch. Unusable ones are removed with a warning."""
        for step in reversed(self.steps()):
            try:
                tensors, state = self._read(step, named_params)
            except CheckpointError as error:
                remaining = [s for s in self.steps() if s < step]
                log.warning("checkpoint %s is unusable (%s): ignored, %s", self.path(step), error,
                            f"resuming from step {remaining[-1]}" if remaining else "training starts afresh")
                shutil.rmtree(self.path(step), ignore_errors=True)
                continue
            with torch.no_grad():
                for name, p in named_params.items():
                    p.copy_(tensors[f"param/{name}"])
            load_optimizer(optimizer, _under("optimizer/", tensors), state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            load_rng(_under("rng/", tensors), state["rng"])
            log.info("resumed from checkpoint %s", self.path(step))
            return state["progress"]
        return None

    def clear(self):
        """Training finished and its output is saved: its checkpoints are no longer needed."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()
