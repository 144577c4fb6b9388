# Learning-rate selection (config `tuning`, peftbench/tuning.py): each tuned variant trains once per rate of
# its grid with the first seed, the rate with the lowest final validation loss is chosen, the other seeds
# train at it (rule train), and the sweep's run at that rate becomes the first seed's final run.


rule tune:
    input:
        model=rules.prepare_model.output[0],
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
    output:
        directory(f"{OUT}/tuning/{{variant}}/lr{{rate}}/trained"),
    params:
        kind=lambda wildcards: VARIANTS[wildcards.variant].kind,
        # the variant's settings at this rate: a grid's new rate is a new job, its old ones stay done
        settings=settings_at_rate,
        training=as_json(learned_training(config["training"])),
        knobs=variant_knobs,
        dtype=config["model"]["dtype"],
        seed=FIRST_SEED,
        checkpoints=lambda wildcards, output: os.path.join(os.path.dirname(output[0]), ".checkpoints"),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/tuning/{{variant}}/lr{{rate}}/train.log",
    benchmark:
        f"{OUT}/benchmarks/tuning/{{variant}}/lr{{rate}}/train.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu_per_step"],
        mem_mb=32000,
        runtime=24 * 60,
    shell:
        "OMP_NUM_THREADS={threads} peftbench train --tuning --variant {wildcards.variant} --kind {params.kind} --model-dir {input.model}"
        " --train {input.train} --validation {input.validation} --settings {params.settings:q}"
        " --training {params.training:q} --knobs {params.knobs:q} --seed {params.seed} --dtype {params.dtype}"
        " --checkpoints {params.checkpoints} --out {output} --log {log}"


rule select_rate:
    input:
        lambda wildcards: sweep_runs(wildcards.variant),
    output:
        f"{OUT}/tuning/{{variant}}/selection.json",
    params:
        kind=lambda wildcards: VARIANTS[wildcards.variant].kind,
        configured_lr=lambda wildcards: main_rate(VARIANTS[wildcards.variant]),
        seed=FIRST_SEED,
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/tuning/{{variant}}/select_rate.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "peftbench select-rate --variant {wildcards.variant} --kind {params.kind}"
        " --configured-lr {params.configured_lr} --seed {params.seed} --runs {input} --out {output} --log {log}"


rule adopt_tuned:
    # only a tuned variant's first seed is adopted; any other run is the train rule's (without this, Snakemake
    # tries this rule first for every run and prints the KeyError of a variant that has no sweep)
    wildcard_constraints:
        variant="|".join(map(re.escape, TUNING)) or "(?!)",
    input:
        selection=lambda wildcards: selection(wildcards.variant),
        sweep=lambda wildcards: sweep_runs(wildcards.variant),
    output:
        directory(f"{OUT}/{{variant}}/seed{FIRST_SEED}/trained"),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/{{variant}}/seed{FIRST_SEED}/adopt_tuned.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "peftbench adopt-tuned --selection {input.selection} --out {output} --log {log}"


ruleorder: adopt_tuned > train
