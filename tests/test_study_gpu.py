"""The arithmetic behind benchmarks/study-h200/study.json: the whole study's wall clock extrapolated from a
quarter-size run. A training run's first validation loss also compiles the no-grad forward; that part must
not be scaled with the data, the rest must be, once per evaluation the full run measures."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_gpu", ROOT / "benchmarks/study_gpu.py")
study_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_gpu)


def test_evaluations_follow_the_training_schedule():
    study = study_gpu.study_config()
    # 15,000 examples at batch 8, 2 epochs: 3,750 steps, a validation loss every 250, the last on step 3,750
    assert study_gpu.evaluations(study, 1.0) == 15
    # 3,750 examples: 938 steps, losses at 250, 500, 750 and the final one at 938
    assert study_gpu.evaluations(study, 0.25) == 4
    study["training"]["eval_every"] = 0
    assert study_gpu.evaluations(study, 1.0) == 1  # at the end only


def test_evaluation_seconds_from_metrics_or_from_the_log(tmp_path):
    recorded = {"validation": [{"step": 250, "loss": 1.0, "seconds": 9.0}, {"step": 938, "loss": 1.0, "seconds": 1.0}]}
    assert study_gpu.evaluation_seconds(recorded, tmp_path / "unused.log") == [9.0, 1.0]
    # a run from before the seconds were recorded: its log's timestamps; the final loss, off the log_every grid,
    # is what validation_seconds leaves
    log = tmp_path / "train.log"
    log.write_text(
        "2026-12-02 22:17:00,187 INFO peftbench.train: step 250/938 loss 12.5976 tokens/s 15494\n"
        "2026-12-02 22:17:09,271 INFO peftbench.train: step 250/938 validation loss 12.5623\n"
        "train lora: 53%|#| 500/938 2026-12-02 22:17:24,295 INFO peftbench.train: step 500/938 loss 12.5 tokens/s 1\n"
        "2026-12-02 22:17:25,213 INFO peftbench.train: step 500/938 validation loss 12.5562\n"
        "2026-12-02 22:17:52,973 INFO peftbench.train: step 938/938 validation loss 12.5609\n")
    old = {"validation": [{"step": s, "loss": 1.0} for s in (250, 500, 938)], "validation_seconds": 11.0}
    seconds = study_gpu.evaluation_seconds(old, log)
    assert seconds == pytest.approx([9.084, 0.918, 11.0 - 9.084 - 0.918])


def test_a_training_job_at_full_size(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("s\th:m:s\n150.0\t0:02:30\n")
    metrics = tmp_path / "train_metrics.json"
    metrics.write_text(json.dumps({
        "train_seconds": 110.0, "cuda_graphs": {"capture_seconds": 50.0}, "validation_seconds": 12.0,
        "encode_seconds": 5.0,
        "validation": [{"step": s, "loss": 1.0, "seconds": t} for s, t in ((250, 9.0), (500, 1.0), (750, 1.0),
                                                                           (938, 1.0))]}))
    parts = study_gpu.train_parts(tsv, metrics, tmp_path / "unused.log", scale=4, evaluations_full=15)
    assert parts["setup_s"] == 35.0 and parts["encode_s"] == 5.0 and parts["steps_s"] == 48.0
    assert parts["validation_first_extra_s"] == 8.0 and parts["validation_each_s"] == 1.0
    # setup and captures stay, encoding grows, the compile stays, 15 evaluations over 4x the examples, 4x the steps
    assert parts["full_job_s"] == pytest.approx(35 + 4 * 5 + 50 + 8 + 15 * 4 * 1.0 + 4 * 48)
