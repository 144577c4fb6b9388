"""kill -9 anywhere, rerun, identical results: the real Snakemake DAG on the tiny Gemma 3, on CPU.

One uninterrupted run of every method is the reference. A second run of the same config is killed with
SIGKILL, whole process group (Snakemake and its jobs), once inside each trained method's training at a
randomly chosen step, once right after a general_loss job (forgetting) has written its output but before
the job ended, and once inside a generation at a randomly chosen chunk; each time it is rerun as the
README says: `--unlock` (the killed Snakemake left its lock), then `--rerun-incomplete`. The kill does not
race the job: tests/stop_hook.py, installed as sitecustomize.py in the killed runs only, wraps the jobs'
checkpoint save (and generation chunk write, and general_loss.json write), so that right after the planned
step (chunk, file) is written the job leaves a marker file and stops itself with SIGSTOP; the test waits for
the marker, then kills. In the end the generations and the scores equal the reference's exactly, and the
trained weights, the loss history and the general-text losses computed from those weights to float32
rounding (1e-5 of each tensor's largest value; of each loss), not bit for bit: a CPU trains in float32,
and some of its parallel kernels (bitsandbytes' 4-bit layers, the turn-token rows' gradient) round
differently in the last bits from one process to the next, even between two uninterrupted runs (measured:
7e-12 to 1.5e-8 on weights of about 0.05). That resuming itself loses nothing, bit for bit,
is tests/test_checkpoint.py's proof, in one process, for every method.
A fake HF token is planted in both runs' environment, and no output, log or message may contain it.
Another model family (a tiny Llama) is killed in training and in generation too, and resumes alike.
"""
import base64
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_workflow import overlay as workflow_overlay

ROOT = Path(__file__).resolve().parents[1]
# Every trained kind of peftbench, and one other peft method (its turn-token rows are peftbench's own).
TRAINED = ["lora", "qlora", "galore", "hybrid", "full", "loha"]
ROUNDING = 1e-5  # float32 rounding across processes (see above)
ALL_METHODS = ["base", *TRAINED]
STEPS = 6  # 24 training examples, batch 4, 1 epoch
PROMPTS = 9  # 3 test prompts per source, one chunk each
CHUNK_PROMPTS = 1
STOP_HOOK = Path(__file__).with_name("stop_hook.py")
FAKE_TOKEN = "hf_peftbenchFakeToken0123456789abcdef"
# What profiles/default sets: a change of code (a rule's shell command) or environment alone retrains nothing.
RERUN_TRIGGERS = ["--rerun-triggers", "mtime", "params", "input"]
pytestmark = pytest.mark.integration


def run(method):
    """A method's output folder under results/: one seed (seed 0) for a trained method."""
    return method if method == "base" else f"{method}/seed0"


def snakemake_command(config, *args, report=False, targets=None):
    """Snakemake on every method's scores and general-text loss (the report adds nothing to compare, unless
    asked for), or on the given targets."""
    settings = yaml.safe_load(Path(config).read_text())
    results = Path(settings["output_dir"])
    targets = targets or [str(results / run(m) / name) for m in settings["compare"]
                          for name in ("scores.json", "general_loss.json")] + [str(results / "report.md")] * report
    # targets first: --configfile and --rerun-triggers would take them as more values
    return [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--snakefile", str(ROOT / "Snakefile"),
            "--configfile", str(config), *RERUN_TRIGGERS, *args]


def environment():
    # MKL may take another code path, and round differently in the last bits, when the machine is loaded
    # (fewer threads, another kernel): pinned here, so that two processes round alike and the 1e-5 bound
    # below measures resuming, not the machine's load (seen once: hybrid's lora_B off by 2e-5 under load).
    return {**os.environ, "HF_TOKEN": FAKE_TOKEN, "MKL_DYNAMIC": "FALSE", "MKL_CBWR": "COMPATIBLE"}


def stopping_environment(hook_dir, stop_dir, results, train=None, generate=None, general_loss=None):
    """environment() plus the stop hook (see stop_hook.py) and its plan: stop after checkpoint step
    train[method] of each planned method, after the chunk generate["first"] of generate["run"], or right
    after general_loss["run"]'s general_loss.json is written."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(STOP_HOOK, hook_dir / "sitecustomize.py")
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"PEFTBENCH_TEST_STOP_DIR": str(stop_dir), "PEFTBENCH_TEST_STOP_RESULTS": str(results),
                "PEFTBENCH_TEST_STOP_TRAIN": json.dumps(train or {}),
                "PEFTBENCH_TEST_STOP_GENERATE": json.dumps(generate),
                "PEFTBENCH_TEST_STOP_GENERAL_LOSS": json.dumps(general_loss)})
    return env


def snakemake(config, *args, check=True, default_triggers=False, report=False):
    command = snakemake_command(config, *args, report=report)
    if default_triggers:  # Snakemake's own default, which profiles/default would otherwise replace
        command = [a for a in command if a not in RERUN_TRIGGERS] + [
            "--rerun-triggers", "code", "input", "mtime", "params", "software-env"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment())
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def overlay(tmp_path, model_dir):
    """test_workflow's tiny study, one seed, a checkpoint every step and a generation chunk per prompt."""
    return workflow_overlay(
        tmp_path, model_dir, seeds=[0],
        training={"epochs": 1, "batch_size": 4, "log_every": 1, "checkpoint_every": 1},
        compare=ALL_METHODS,
        variants={"galore": {"rank": 8, "update_proj_gap": 2}, "hybrid": {"rank": 8, "update_proj_gap": 2},
                  "full": {"lr": 1.0e-4}, "loha": {"kind": "loha", "r": 4, "alpha": 8}},
        generation={"max_new_tokens": 16, "batch_size": 1, "chunk_prompts": CHUNK_PROMPTS},
        # one step at a time, so that each kill interrupts exactly the one job its assertions name
        threads=4, gpu_per_step=1)


def run_until(config, log_path, stop_dir, env, timeout=3600, targets=None):
    """Unlock, then run the whole workflow (or `targets`) in its own process group, with env (stopping_environment's);
    once a job has stopped itself at its planned point and left its marker in stop_dir, SIGKILL the group
    and return the markers. The timeout only guards against a hung run: nothing here races the jobs."""
    snakemake(config, "--unlock")
    stop_dir.mkdir(parents=True)
    with open(log_path, "a") as log:
        process = subprocess.Popen(snakemake_command(config, "--rerun-incomplete", targets=targets), cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if list(stop_dir.glob("*.json")):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    markers = [json.loads(m.read_text()) for m in sorted(stop_dir.glob("*.json"))]
                    for marker in markers:  # a job outside the group would survive the kill, stopped
                        if marker["pgid"] != process.pid:
                            os.kill(marker["pid"], signal.SIGKILL)
                            raise AssertionError(f"a job ran outside Snakemake's process group: {marker}")
                    return markers
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        raise AssertionError(f"the run ended (rc {process.returncode}) before the planned kill:\n"
                             f"{Path(log_path).read_text()[-3000:]}")


def trained_tensors(folder):
    files = [folder / "full_rank_weights.safetensors", folder / "adapter" / "adapter_model.safetensors",
             folder / "turn_token_rows.safetensors"]
    return {f"{f.name}:{k}": v for f in files if f.exists() for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir):
    tmp_path = tmp_path_factory.mktemp("reference")
    config = overlay(tmp_path, model_dir)
    result = snakemake(config)
    (tmp_path / "snakemake.log").write_text(result.stdout + result.stderr)
    return tmp_path


@pytest.fixture(scope="module")
def killed(tmp_path_factory, model_dir):
    """The same config, killed inside every method's training and inside one generation, rerun each time."""
    tmp_path = tmp_path_factory.mktemp("killed")
    config, results, log_path = overlay(tmp_path, model_dir), tmp_path / "results", tmp_path / "snakemake.log"
    rng = random.Random()
    plan = {m: rng.randint(1, STEPS - 2) for m in TRAINED}  # the step whose checkpoint triggers the kill
    chunk = rng.randint(1, PROMPTS - 2)  # how many generation chunks are saved when it is killed
    kills = []

    def stop(targets=None, **plan_of_this_run):
        stop_dir = tmp_path / f"stop-{len(kills)}"
        env = stopping_environment(tmp_path / "hook", stop_dir, results, **plan_of_this_run)
        return run_until(config, log_path, stop_dir, env, targets=targets)

    while plan:
        for marker in stop(train=plan):
            method, step = marker["name"], marker["step"]
            assert marker["kind"] == "train" and plan.get(method) == step, (marker, plan)
            kills.append(("train", method, step, (results / run(method) / "trained").exists()))
            del plan[method]
    # A run whose general-text loss and generation have not started (the last one killed in training, at
    # least), killed right after its general_loss.json is written; only that file is asked for, so that its
    # generation is still fresh for the kill below.
    unmeasured = [m for m in ALL_METHODS if not (results / run(m) / "general_loss.json").exists()
                  and not (results / run(m) / "generations.jsonl").exists()
                  and not list((results / run(m)).glob(".generations.jsonl.chunks/*/*.json"))]
    assert unmeasured, "every general-text loss has been measured"
    method = rng.choice(unmeasured)
    [marker] = stop(general_loss={"run": run(method)}, targets=[str(results / run(method) / "general_loss.json")])
    assert (marker["kind"], marker["name"]) == ("general_loss", run(method)), marker
    kills.append(("general_loss", method, marker["mtime_ns"], False))  # unmeasured: not finished before this run
    # A run whose generation has not started: the last one killed in training, at least.
    fresh = [m for m in ALL_METHODS if not (results / run(m) / "generations.jsonl").exists()
             and not list((results / run(m)).glob(".generations.jsonl.chunks/*/*.json"))]
    assert fresh, "every generation has started"
    method = rng.choice(fresh)
    [marker] = stop(generate={"run": run(method), "first": (chunk - 1) * CHUNK_PROMPTS})
    assert (marker["kind"], marker["name"]) == ("generate", run(method)), marker
    kills.append(("generate", method, chunk, (results / run(method) / "generations.jsonl").exists()))
    locked = snakemake(config, check=False)  # a plain rerun right after a kill
    snakemake(config, "--unlock")
    after_kill = snakemake(config, "--rerun-incomplete", "-n", check=False)  # what the rerun will do
    planned = re.findall(r"^\s*output: (.+)$", after_kill.stdout + after_kill.stderr, re.M)
    after_kill.planned = [o for outputs in planned for o in outputs.split(", ")]
    after_kill.planned_but_present = [o for o in after_kill.planned if Path(o).exists()]
    final = snakemake(config, "--rerun-incomplete", report=True)  # the report too, for the token test
    log_path.write_text(log_path.read_text() + final.stdout + final.stderr)
    return tmp_path, kills, {"locked": locked, "after_kill": after_kill}


def test_every_kill_landed_mid_step(killed):
    _, kills, _ = killed
    assert sorted(k[1] for k in kills if k[0] == "train") == sorted(TRAINED)
    assert [k[0] for k in kills].count("generate") == 1
    assert [k[0] for k in kills].count("general_loss") == 1
    assert not any(k[3] for k in kills), f"a kill came after its step had finished: {kills}"


@pytest.mark.parametrize("method", TRAINED)
def test_training_killed_and_resumed_gives_the_same_weights(method, reference, killed):
    tmp_path, kills, _ = killed
    step = next(k[2] for k in kills if k[:2] == ("train", method))
    ref_dir, out_dir = reference / "results" / run(method) / "trained", tmp_path / "results" / run(method) / "trained"
    ref, out = trained_tensors(ref_dir), trained_tensors(out_dir)
    assert ref.keys() == out.keys() and ref
    different = [name for name in ref if (out[name] - ref[name]).abs().max() > ROUNDING * ref[name].abs().max()]
    assert not different, f"{method} killed at step {step}: {different[:3]} differ"
    ref_metrics, metrics = (json.loads((d / "train_metrics.json").read_text()) for d in (ref_dir, out_dir))
    assert metrics["resumed_at_steps"] and metrics["resumed_at_steps"][0] >= step  # resumed, not retrained
    assert [h["loss"] for h in metrics["loss"]] == pytest.approx([h["loss"] for h in ref_metrics["loss"]],
                                                                  rel=ROUNDING, abs=0)
    assert metrics["tokens_seen"] == ref_metrics["tokens_seen"]
    assert not (tmp_path / "results" / run(method) / ".checkpoints").exists()  # cleared once the output is saved


@pytest.mark.parametrize("method", ALL_METHODS)
def test_generations_and_scores_are_identical(method, reference, killed):
    tmp_path, _, _ = killed
    for name in ("generations.jsonl", "scores.json"):
        killed_file, reference_file = (root / "results" / run(method) / name for root in (tmp_path, reference))
        assert killed_file.read_bytes() == reference_file.read_bytes()
    assert not list((tmp_path / "results" / run(method)).glob(".generations.jsonl.chunks"))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_general_text_losses_are_identical(method, reference, killed):
    """The same passages and token counts, and the same losses to float32 rounding: the trained weights they
    are computed from differ in the last bits between processes (see above); the base's are bit for bit."""
    tmp_path, kills, _ = killed
    killed_run, reference_run = (json.loads((root / "results" / run(method) / "general_loss.json").read_text())
                                 for root in (tmp_path, reference))
    exact = {k: v for k, v in killed_run.items() if k not in ("nll", "loss")}
    assert exact == {k: v for k, v in reference_run.items() if k not in ("nll", "loss")}  # passages, tokens, text
    assert killed_run["nll"] == pytest.approx(reference_run["nll"], rel=ROUNDING, abs=0)
    if method == "base":
        assert killed_run == reference_run
    killed_job = next((k for k in kills if k[:2] == ("general_loss", method)), None)
    if killed_job:  # written, then killed before the job ended: the rerun did the job again
        assert (tmp_path / "results" / run(method) / "general_loss.json").stat().st_mtime_ns > killed_job[2]


def test_killed_generation_resumed_after_its_saved_chunks(killed):
    tmp_path, kills, _ = killed
    method = next(k[1] for k in kills if k[0] == "generate")
    log = (tmp_path / "results" / "logs" / run(method) / "generate.log").read_text()
    assert "already answered (resumed)" in log


def test_rerun_after_a_kill_needs_unlock_then_redoes_the_killed_job(killed):
    """The killed Snakemake leaves its lock: a plain rerun stops and names --unlock. After unlocking, the
    killed job's output is missing (it is renamed into place only when complete), so the rerun plans that
    job and what depends on it, and nothing that had finished."""
    tmp_path, kills, runs = killed
    locked = runs["locked"].stdout + runs["locked"].stderr
    assert runs["locked"].returncode != 0 and "Directory cannot be locked" in locked and "--unlock" in locked
    method = kills[-1][1]  # the last kill was inside generate_<method>
    plan = runs["after_kill"].stdout + runs["after_kill"].stderr
    assert runs["after_kill"].returncode == 0, plan
    assert str(tmp_path / "results" / run(method) / "generations.jsonl") in runs["after_kill"].planned, plan
    assert not runs["after_kill"].planned_but_present, plan


def test_hf_token_never_written(reference, killed):
    """Every file of both runs: outputs, report, step logs, Snakemake's own output."""
    assert (killed[0] / "results" / "report.md").exists()
    for root in (reference, killed[0]):
        for path in root.rglob("*"):
            if path.is_file():
                assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_rerun_triggers_retrain_on_a_changed_setting_not_on_a_changed_rule_command(reference):
    """profiles/default's triggers (mtime, params, input): editing a rule's command retrains nothing, while
    Snakemake's default triggers (which add code) would; a changed setting still retrains every method."""
    config, results = reference / "overlay.yaml", reference / "results"
    # An edited train.smk, as Snakemake sees it: the command recorded for lora's training differs.
    record_path = ROOT / ".snakemake" / "metadata" / base64.urlsafe_b64encode(
        str(results / run("lora") / "trained").encode()).decode()
    original = record_path.read_text()
    record = json.loads(original)
    record["code"] += "  # an edit"
    record_path.write_text(json.dumps(record))
    try:
        default = snakemake(config, "-n", default_triggers=True)
        ours = snakemake(config, "-n")
    finally:
        record_path.write_text(original)
    assert re.search(r"^train\s+1$", default.stdout, re.M) and "Code has changed" in default.stdout
    assert "Nothing to be done" in ours.stdout + ours.stderr

    changed = yaml.safe_load(config.read_text())
    changed["training"]["warmup_ratio"] = 0.5
    changed_config = reference / "changed.yaml"
    changed_config.write_text(yaml.safe_dump(changed))
    plan = snakemake(changed_config, "-n")
    assert re.search(rf"^train\s+{len(TRAINED)}$", plan.stdout, re.M), plan.stdout


# A learning-rate sweep (peftbench.tuning) killed inside its second rate's training: the rerun resumes that run,
# chooses the same rate from the same validation losses, and ends with the reference's weights.
SWEEP = [1.0e-3, 1.0e-2]


def sweep_overlay(tmp_path, model_dir):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = workflow_overlay(
        tmp_path, model_dir, seeds=[0], compare=["base", "lora"], tuning={"grids": {"lora": SWEEP}},
        training={"epochs": 1, "batch_size": 4, "log_every": 1, "checkpoint_every": 1, "eval_every": 2},
        generation={"max_new_tokens": 16, "batch_size": 4})
    settings = yaml.safe_load(config.read_text())
    for source in settings["data"]["sources"]:
        source["validation"] = {"n": 2}
    config.write_text(yaml.safe_dump(settings))
    return config


def test_a_killed_sweep_resumes_to_the_same_choice_and_weights(tmp_path, model_dir):
    reference_config = sweep_overlay(tmp_path / "reference", model_dir)
    snakemake(reference_config)
    killed_dir = tmp_path / "killed"
    config, results = sweep_overlay(killed_dir, model_dir), killed_dir / "results"
    folder, step = f"tuning/lora/lr{SWEEP[1]:g}", random.Random().randint(1, STEPS - 2)
    [marker] = run_until(config, killed_dir / "snakemake.log", killed_dir / "stop",
                         stopping_environment(killed_dir / "hook", killed_dir / "stop", results, train={folder: step}))
    assert (marker["name"], marker["step"]) == (folder, step)
    assert not (results / folder / "trained").exists() and not (results / "data/test.jsonl").exists()
    snakemake(config, "--unlock")
    snakemake(config, "--rerun-incomplete")
    reference = tmp_path / "reference" / "results"
    chosen, expected = (json.loads((r / "tuning/lora/selection.json").read_text()) for r in (results, reference))
    assert chosen["chosen_lr"] == expected["chosen_lr"]
    assert [p["validation_loss"] for p in chosen["points"]] == pytest.approx(
        [p["validation_loss"] for p in expected["points"]], rel=ROUNDING, abs=0)
    resumed = json.loads((results / folder / "trained/train_metrics.json").read_text())
    assert resumed["resumed_at_steps"] and resumed["resumed_at_steps"][0] >= step
    assert [v["step"] for v in resumed["validation"]] == [2, 4, 6]  # none lost, none measured twice
    ref, out = (trained_tensors(r / "lora/seed0/trained") for r in (reference, results))
    assert ref.keys() == out.keys() and ref
    assert not [n for n in ref if (out[n] - ref[n]).abs().max() > ROUNDING * ref[n].abs().max()]
    for name in ("generations.jsonl", "scores.json"):
        assert (results / "lora/seed0" / name).read_bytes() == (reference / "lora/seed0" / name).read_bytes()


def test_a_llama_run_killed_in_training_and_in_generation_resumes_to_the_same_results(tmp_path_factory):
    """Another model family (tiny Llama: its own turn format, no padding token): LoRA killed at a random
    checkpoint step, then a generation killed after a random chunk; the rerun equals an uninterrupted run."""
    from tiny import make_model_dir

    llama = make_model_dir(tmp_path_factory.mktemp("llama-model"), "llama")
    configs = {}
    for name in ("reference", "killed"):
        tmp_path = tmp_path_factory.mktemp(f"llama-{name}")
        configs[name] = workflow_overlay(
            tmp_path, llama, seeds=[0], compare=["base", "lora"], variants={},
            training={"epochs": 1, "batch_size": 4, "log_every": 1, "checkpoint_every": 1},
            generation={"max_new_tokens": 16, "batch_size": 1, "chunk_prompts": CHUNK_PROMPTS},
            threads=4, gpu_per_step=1)
    snakemake(configs["reference"])
    tmp_path = Path(configs["killed"]).parent
    results, log_path, rng = tmp_path / "results", tmp_path / "snakemake.log", random.Random()
    step, chunk = rng.randint(1, STEPS - 2), rng.randint(1, PROMPTS - 2)
    plans = [{"train": {"lora": step}}, {"generate": {"run": "lora/seed0", "first": (chunk - 1) * CHUNK_PROMPTS}}]
    for number, plan in enumerate(plans):
        stop_dir = tmp_path / f"stop-{number}"
        env = stopping_environment(tmp_path / "hook", stop_dir, results, **plan)
        [marker] = run_until(configs["killed"], log_path, stop_dir, env)
        assert marker["kind"] == next(iter(plan)), marker
    snakemake(configs["killed"], "--unlock")
    snakemake(configs["killed"], "--rerun-incomplete")
    reference = Path(configs["reference"]).parent / "results"
    for method in ("base", "lora"):
        for name in ("generations.jsonl", "scores.json"):
            assert (results / run(method) / name).read_bytes() == (reference / run(method) / name).read_bytes()
    ref, out = (trained_tensors(root / "lora" / "seed0" / "trained") for root in (reference, results))
    assert ref.keys() == out.keys() and ref
    assert all((out[k] - ref[k]).abs().max() <= ROUNDING * ref[k].abs().max() for k in ref)
    metrics = json.loads((results / "lora" / "seed0" / "trained" / "train_metrics.json").read_text())
    assert metrics["resumed_at_steps"] and metrics["resumed_at_steps"][0] >= step
