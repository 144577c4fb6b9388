rule prepare_data:
    input:
        model=rules.prepare_model.output[0],
        files=local_data_files(),
    output:
        train=f"{OUT}/data/train.jsonl",
        test=f"{OUT}/data/test.jsonl",
        manifest=f"{OUT}/data/manifest.json",
    params:
        data=as_json(config["data"]),
        builtin_version=as_json(builtin_data_version(config["data"])),
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
        "peftbench prepare-data --data {params.data:q} --model-dir {input.model} --seed {params.seed}"
        " --out {params.out_dir} --log {log}"
