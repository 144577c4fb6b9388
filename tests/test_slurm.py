"""The workflow through profiles/slurm on a real one-node SLURM cluster (scripts/slurm_cluster.sh).

Every step must go through sbatch with its rule's requests, show up in SLURM's accounting, and give the
same results as a local run. Only the GPU requests are overridden: the test machine has no GPU.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from system_installs import skip_unless_opted_in
from test_workflow import overlay as workflow_overlay

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = [str(ROOT / "scripts" / "slurm_cluster.sh")]
METHODS = ["base", "lora"]  # one untrained and one trained variant (one seed): every rule, 9 jobs
RUNS = {"base": "base", "lora": "lora/seed0"}
# Resources as the SLURM runs were verified with: 4 threads a model step, each claiming gpu=1 (the shared
# overlay now runs steps two at a time on a CPU).
AS_TESTED = {"threads": 4, "gpu_per_step": 1}
pytestmark = pytest.mark.integration


def why_no_cluster():
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux: scripts/slurm_cluster.sh starts SLURM's and munge's daemons"
    if not shutil.which("dpkg-query"):
        return "needs Debian or Ubuntu: scripts/slurm_cluster.sh asks dpkg which SLURM packages are there"
    return None


@pytest.fixture(scope="module")
def slurm_env():
    """SLURM_CONF of a running test cluster: started here unless it was up already, and then stopped.
    SLURM, munge and MariaDB are installed first where missing, if the tests may install (system_installs)."""
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "SLURM_CONF": os.environ.get("PEFTBENCH_SLURM_DIR", "/tmp/peftbench-slurm") + "/slurm.conf"}
    already_up = subprocess.run([*CLUSTER, "status"], env=env, capture_output=True).returncode == 0
    if not already_up:
        missing = subprocess.run([*CLUSTER, "missing"], capture_output=True, text=True, check=True).stdout.strip()
        if missing:
            skip_unless_opted_in(missing, "scripts/slurm_cluster.sh start, with apt-get")
        started = subprocess.run([*CLUSTER, "start"], env=env, capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            subprocess.run([*CLUSTER, "stop"], env=env, timeout=120)  # what did start
            pytest.fail(f"the test cluster did not start: {started.stderr}")
    yield env
    if not already_up:
        subprocess.run([*CLUSTER, "stop"], env=env, check=True, timeout=120)


def start_snakemake(*args, env=None):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(run):
    log, _ = run.communicate(timeout=900)
    assert run.returncode == 0, f"snakemake failed:\n{log[-6000:]}"
    return log


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir, slurm_env):
    """The same tiny DAG run locally and through profiles/slurm, at once, into two output folders."""
    local_dir, slurm_dir = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    # forgetting off: its jobs run in tests/test_workflow.py; here the jobs counted below
    local = start_snakemake("--cores", "2", "--configfile",
                            str(workflow_overlay(local_dir, model_dir, compare=METHODS, seeds=[0], forgetting="off", **AS_TESTED)))
    env = {**slurm_env, "SBATCH_PARTITION": "gpu", "SBATCH_ACCOUNT": "peftbench"}  # read by the profile
    slurm = start_snakemake(
        "--workflow-profile", str(ROOT / "profiles" / "slurm"),
        "--configfile", str(workflow_overlay(slurm_dir, model_dir, compare=METHODS, seeds=[0], forgetting="off", **AS_TESTED)),
        "--set-resources", "train:gpu=0", "generate:gpu=0",  # no GPU here; all other requests as profiled
        "--slurm-init-seconds-before-status-checks", "5",
        "--slurm-logdir", str(slurm_dir / "slurm_logs"), "--slurm-keep-successful-logs",
        env=env,
    )
    finish(local)
    return local_dir / "results", slurm_dir / "results", finish(slurm)


def sacct(job_ids, env):
    fields = "JobID,State,Partition,Account,ReqMem,AllocCPUS,Timelimit,Comment%80"
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", fields],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields.replace("%80", "").split(","), line.split("|"))) for line in out.splitlines()]


def test_every_job_ran_through_slurm_with_its_rules_requests(runs, slurm_env):
    _, slurm_results, log = runs
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(job_ids) == 10, log[-3000:]
    for job_id in job_ids:  # the plugin's per-job log, kept
        assert list(slurm_results.parent.glob(f"slurm_logs/**/{job_id}.log")), job_id
    jobs = sacct(job_ids, slurm_env)
    rules = sorted(re.match(r"rule_(.+?)(_wildcards_|$)", job["Comment"]).group(1) for job in jobs)
    assert rules == sorted(["prepare_model", "prepare_data", "prepare_test", "train", "generate", "generate", "score",
                            "score", "compare", "report"]), rules
    for job in jobs:
        assert (job["State"], job["Partition"], job["Account"]) == ("COMPLETED", "gpu", "peftbench"), job
    # train.smk: threads 4, mem_mb 32000, runtime 24 h; score.smk: 1 thread, 2000 MB, 30 min
    train = next(job for job in jobs if job["Comment"].startswith("rule_train_"))
    score = next(job for job in jobs if job["Comment"].startswith("rule_score_"))
    assert (train["AllocCPUS"], train["ReqMem"], train["Timelimit"]) == ("4", "32000M", "1-00:00:00")
    assert (score["AllocCPUS"], score["ReqMem"], score["Timelimit"]) == ("1", "2000M", "00:30:00")


def test_slurm_results_equal_the_local_run(runs):
    local, slurm, _ = runs
    for run in RUNS.values():
        assert (slurm / run / "generations.jsonl").read_text() == (local / run / "generations.jsonl").read_text()
        assert json.loads((slurm / run / "scores.json").read_text()) == json.loads((local / run / "scores.json").read_text())
    local_loss = json.loads((local / RUNS["lora"] / "trained" / "train_metrics.json").read_text())["loss"]
    slurm_loss = json.loads((slurm / RUNS["lora"] / "trained" / "train_metrics.json").read_text())["loss"]
    # Float32 on a CPU: the SLURM job trains with its own thread count, and sums split over another number
    # of threads round differently, so the losses agree to float32 rounding rather than bit for bit.
    assert [h["step"] for h in slurm_loss] == [h["step"] for h in local_loss] and len(local_loss) == 6
    assert [h["loss"] for h in slurm_loss] == pytest.approx([h["loss"] for h in local_loss], rel=1e-5)
    assert re.search(r"^\| lora +\|", (slurm / "report.md").read_text(), re.M)


def test_profiles_parse_and_keep_code_changes_from_rerunning(tmp_path, model_dir):
    """Both profiles load (dry run), and both leave `code` out of the rerun triggers."""
    config = str(workflow_overlay(tmp_path, model_dir, compare=METHODS, seeds=[0], **AS_TESTED))
    for profile in ("default", "slurm"):
        settings = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
        assert settings["rerun-triggers"] == ["mtime", "params", "input"]
        log = finish(start_snakemake("--workflow-profile", str(ROOT / "profiles" / profile), "--configfile", config, "-n"))
        assert re.search(r"^train\s+1$", log, re.M)


def test_cluster_script_is_idempotent(slurm_env):
    started = Path(slurm_env["SLURM_CONF"]).with_name("started")
    before = started.read_text() if started.exists() else ""
    again = subprocess.run([*CLUSTER, "start"], env=slurm_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (started.read_text() if started.exists() else "") == before  # nothing started twice
    assert subprocess.run([*CLUSTER, "status"], env=slurm_env, capture_output=True).returncode == 0
