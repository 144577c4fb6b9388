"""One card per GPU step: parallel steps on a multi-GPU machine each claim a different free GPU.

Snakemake's `--resources gpu=N` only caps how many GPU jobs run at once; it does not say which card a job
gets, so without this every job would land on GPU 0. A step claims the first free card by taking an
exclusive lock on one file per card, then sets CUDA_VISIBLE_DEVICES before torch starts. The kernel drops
a flock when its process ends, killed or not, so a claim never outlives its step.

A scheduler that assigns cards itself (SLURM sets CUDA_VISIBLE_DEVICES for a `--gpus` job), or a user
who sets CUDA_VISIBLE_DEVICES, wins: then nothing is claimed.
"""
import fcntl
import logging
import os
import tempfile
import time

log = logging.getLogger(__name__)

# Counted without torch: torch caches its device count the first time it is asked, which would then
# disagree with the CUDA_VISIBLE_DEVICES set here.
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # one entry per card the driver (or the container) exposes


def count_gpus(driver_dir=NVIDIA_GPUS):
    try:
        return len(os.listdir(driver_dir))
    except (FileNotFoundError, NotADirectoryError):
        return 0


def default_lock_dir():
    """Shared by every step on this machine; PEFTBENCH_GPU_LOCK_DIR moves it."""
    return os.environ.get("PEFTBENCH_GPU_LOCK_DIR") or os.path.join(tempfile.gettempdir(), "peftbench-gpu-locks")


def try_claim(index, lock_dir):
    """The open lock file of card `index` if it was free (keep it open to keep the card), else None."""
    fd = os.open(os.path.join(lock_dir, f"gpu{index}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_gpu(environ=None, n_gpus=None, lock_dir=None, poll_seconds=5.0):
    """Claim a free card for this process and point CUDA_VISIBLE_DEVICES at it.

    Returns the lock's file descriptor (the claim lasts until it is closed or the process ends), or None
    when there is nothing to claim: no GPU, or CUDA_VISIBLE_DEVICES already set. When every card is
    taken (more GPU jobs than cards), waits for one to free up rather than share it.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return None
    n_gpus = count_gpus() if n_gpus is None else n_gpus
    if n_gpus == 0:
        return None
    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, exist_ok=True)
    waiting = False
    while True:
        for index in range(n_gpus):
            fd = try_claim(index, lock_dir)
            if fd is not None:
                environ["CUDA_VISIBLE_DEVICES"] = str(index)
                log.info("using GPU %d of %d (claimed with %s/gpu%d.lock)", index, n_gpus, lock_dir, index)
                return fd
        if not waiting:
            log.info("all %d GPUs are taken by other steps; waiting for one to free up", n_gpus)
            waiting = True
        time.sleep(poll_seconds)
