"""Distinct GPUs for parallel steps, checked on CPU: the claims are lock files, the card count is a parameter."""
import os
import signal
import subprocess
import sys
import threading
import types

import pytest

from peftbench import cli
from peftbench.gpus import claim_gpu, count_gpus

# A child process that claims a card, says which, and holds it until killed.
CLAIMER = """
import os, sys, time
from peftbench.gpus import claim_gpu
environ = {}
claim_gpu(environ, n_gpus=int(sys.argv[1]), lock_dir=sys.argv[2], poll_seconds=0.05)
print(environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(60)
"""


def start_claimer(n_gpus, lock_dir):
    return subprocess.Popen([sys.executable, "-c", CLAIMER, str(n_gpus), str(lock_dir)],
                            stdout=subprocess.PIPE, text=True)


def test_parallel_processes_get_distinct_cards(tmp_path):
    claimers = [start_claimer(4, tmp_path) for _ in range(4)]
    try:
        cards = [c.stdout.readline().strip() for c in claimers]
    finally:
        for c in claimers:
            c.kill()
            c.wait()
    assert sorted(cards) == ["0", "1", "2", "3"]


def test_a_killed_step_frees_its_card(tmp_path):
    holder = start_claimer(2, tmp_path)
    assert holder.stdout.readline().strip() == "0"
    environ = {}
    claim_gpu(environ, n_gpus=2, lock_dir=tmp_path)
    assert environ["CUDA_VISIBLE_DEVICES"] == "1"
    holder.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
    holder.wait()
    environ = {}
    claim_gpu(environ, n_gpus=2, lock_dir=tmp_path)
    assert environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_more_steps_than_cards_wait_instead_of_sharing(tmp_path):
    first = claim_gpu({}, n_gpus=1, lock_dir=tmp_path)
    late = {}
    waiter = threading.Thread(target=claim_gpu, args=(late, 1, tmp_path, 0.02))
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive() and "CUDA_VISIBLE_DEVICES" not in late
    os.close(first)  # the first step ends
    waiter.join(timeout=5)
    assert late["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.parametrize("preset", ["2", "", "GPU-5f1c"])
def test_a_scheduler_or_user_assignment_wins(tmp_path, preset):
    environ = {"CUDA_VISIBLE_DEVICES": preset}  # SLURM sets it for a --gpus job
    assert claim_gpu(environ, n_gpus=4, lock_dir=tmp_path) is None
    assert environ == {"CUDA_VISIBLE_DEVICES": preset}
    assert not any(tmp_path.iterdir())


def test_no_gpu_claims_nothing(tmp_path):
    environ = {}
    assert count_gpus(tmp_path / "no-driver") == 0
    assert claim_gpu(environ, n_gpus=0, lock_dir=tmp_path) is None
    assert environ == {}


def test_gpus_are_counted_from_the_driver(tmp_path):
    for bus_id in ("0000:18:00.0", "0000:3b:00.0"):
        (tmp_path / bus_id).mkdir()
    assert count_gpus(tmp_path) == 2


def test_only_gpu_steps_claim_a_card(tmp_path, monkeypatch):
    seen = {}
    fake_step = types.ModuleType("fake_step")
    fake_step.main = lambda argv: seen.setdefault("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
    monkeypatch.setitem(sys.modules, "fake_step", fake_step)
    monkeypatch.setattr(cli, "STEPS", {"train": ("fake_step", "a GPU step"), "score": ("fake_step", "a CPU step")})
    monkeypatch.setattr("peftbench.gpus.count_gpus", lambda: 2)
    monkeypatch.setenv("PEFTBENCH_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so that monkeypatch restores it after main sets it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cli.main(["score"]) == 0 and seen.pop("cuda") is None
    assert cli.main(["train"]) == 0 and seen.pop("cuda") == "0"
