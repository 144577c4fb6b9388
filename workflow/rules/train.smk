rule train:
    input:
        model=rules.prepare_model.output[0],
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
        selection=lambda wildcards: selection(wildcards.variant) if wildcards.variant in TUNING else [],
    output:
        directory(f"{OUT}/{{variant}}/seed{{seed}}/trained"),
    params:
        kind=lambda wildcards: VARIANTS[wildcards.variant].kind,
        settings=variant_settings,
        training=as_json(learned_training(config["training"])),
        knobs=variant_knobs,
        dtype=config["model"]["dtype"],
        rate=lambda wildcards, input: f"--rate-from {input.selection}" if input.selection else "",
        # Beside the output, not in it: Snakemake deletes a job's outputs before it runs, and these must
        # survive a kill. Derived from the output path, so every output folder has its own.
        checkpoints=lambda wildcards, output: os.path.join(os.path.dirname(output[0]), ".checkpoints"),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/{{variant}}/seed{{seed}}/train.log",
    benchmark:
        f"{OUT}/benchmarks/{{variant}}/seed{{seed}}/train.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu_per_step"],
        mem_mb=32000,
        runtime=24 * 60,
    shell:
        "OMP_NUM_THREADS={threads} peftbench train --variant {wildcards.variant} --kind {params.kind} --model-dir {input.model}"
        " --train {input.train} --settings {params.settings:q} --training {params.training:q}"
        " --validation {input.validation} {params.rate} --knobs {params.knobs:q} --seed {wildcards.seed}"
        " --dtype {params.dtype} --checkpoints {params.checkpoints} --out {output} --log {log}"
