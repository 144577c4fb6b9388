# Forgetting (peftbench/forgetting.py): every model's loss on general text, the base's and each trained run's.
# The passages are drawn once; each run's loss is a step of its own, cached like its generation.
rule prepare_general_text:
    input:
        files=local_general_text_files(),
    output:
        f"{OUT}/general_text/passages.json",
    params:
        forgetting=as_json(config.get("forgetting")),
        seed=config["seed"],
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/prepare_general_text.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_general_text.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "peftbench general-text --forgetting {params.forgetting:q} --seed {params.seed} --out {output} --log {log}"


rule general_loss:
    input:
        model=rules.prepare_model.output[0],
        passages=rules.prepare_general_text.output[0],
        trained=trained_dir,
    output:
        f"{OUT}/{{run}}/general_loss.json",
    params:
        trained=lambda wildcards, input: f"--trained {input.trained}" if input.trained else "",
        kind=lambda wildcards: run_variant(wildcards).kind,
        settings=variant_settings,
        variant=lambda wildcards: run_variant(wildcards).name,
        seed=run_seed_arg,
        max_length=config["forgetting"]["max_length"] if FORGETTING else 0,
        dtype=config["model"]["dtype"],
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/{{run}}/general_loss.log",
    benchmark:
        f"{OUT}/benchmarks/{{run}}/general_loss.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu_per_step"],
        mem_mb=16000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} peftbench general-loss --kind {params.kind} --model-dir {input.model} {params.trained}"
        " --passages {input.passages} --settings {params.settings:q} --max-length {params.max_length}"
        " --variant {params.variant} {params.seed} --dtype {params.dtype} --out {output} --log {log}"
