rule prepare_data:
    input:
        model=rules.prepare_model.output[0],
        files=local_data_files(),
    output:
        train=f"{OUT}/data/train.jsonl",
        validation=f"{OUT}/data/validation.jsonl",
        manifest=f"{OUT}/data/manifest.json",
    params:
        data=as_json(config["data"]),
        builtin_version=as_json(builtin_data_version(config["data"])),
        data_format=DATA_FORMAT_VERSION,
        seed=config["seed"],
        out_dir=lambda wildcards, output: os.path.dirname(output.train),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/prepare_data.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_data.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "peftbench prepare-data --splits train validation --data {params.data:q} --model-dir {input.model}"
        " --seed {params.seed} --out {params.out_dir} --log {log}"


# The test split is written only once every learning rate is chosen (on validation data): nothing before the
# final runs can read it. The same draw as prepare_data's, checked against its manifest. The selections only
# order it (ancient: a rerun sweep, which cannot change the test draw, does not rewrite it and rerun every
# variant's generation).
rule prepare_test:
    input:
        model=rules.prepare_model.output[0],
        manifest=rules.prepare_data.output.manifest,
        files=local_data_files(),
        selections=[ancient(path) for path in SELECTIONS],
    output:
        f"{OUT}/data/test.jsonl",
    params:
        data=as_json(config["data"]),
        builtin_version=as_json(builtin_data_version(config["data"])),
        data_format=DATA_FORMAT_VERSION,
        seed=config["seed"],
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/prepare_test.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_test.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "peftbench prepare-data --splits test --data {params.data:q} --model-dir {input.model}"
        " --seed {params.seed} --out {params.out_dir} --log {log}"
