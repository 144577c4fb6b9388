"""Hub sources that cannot be fetched stop with one line naming the fix, and write nothing."""
import json
import os
import subprocess
import sys

STUDY_SOURCE = {"name": "alpaca", "hub": "tatsu-lab/alpaca", "revision": "main", "format": "alpaca",
                "train": {"split": "train", "n": 5}, "test": {"split": "train", "n": 2}}


def peftbench(tmp_path, *args):
    # Offline with an empty cache: what a user without internet (or before the first download) meets.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return subprocess.run([sys.executable, "-m", "peftbench", *args], capture_output=True, text=True, env=env)


def test_uncached_hub_model_offline(tmp_path):
    model = {"source": "hub", "id": "google/gemma-3-1b-it", "revision": "main", "dtype": "bfloat16"}
    result = peftbench(tmp_path, "prepare-model", "--model", json.dumps(model), "--out", str(tmp_path / "model"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "peftbench prepare-model: error: model google/gemma-3-1b-it is not in the local cache and the hub "
        "cannot be reached: connect to the internet or unset HF_HUB_OFFLINE")
    assert not (tmp_path / "model").exists()


def test_uncached_hub_dataset_offline(tmp_path, model_dir):
    data = {"max_length": 512, "sources": [STUDY_SOURCE]}
    result = peftbench(tmp_path, "prepare-data", "--data", json.dumps(data), "--model-dir", str(model_dir),
                       "--out", str(tmp_path / "data"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("peftbench prepare-data: error: dataset tatsu-lab/alpaca is not cached and the hub "
                           "cannot be reached"), last
    assert not (tmp_path / "data").exists()
