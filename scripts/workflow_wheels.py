"""Keeps, of the wheels `pip wheel` built for the workflow's packages (scripts/offline_gpu_bundle.sh with
WORKFLOW=1), those the GPU machine's image lacks, as builds for its CPython.

  python scripts/workflow_wheels.py FOLDER PYTHON_VERSION    # FOLDER/all/*.whl in, FOLDER/*.whl out
"""
import subprocess
import sys
import zipfile
from pathlib import Path

# The GPU image's packages among the workflow's needs (/work/.library/device/KINDS.md): never carried.
IMAGE = set("""absl-py aiohttp aiohappyeyeballs aiosignal anyio attrs certifi charset-normalizer click filelock
frozenlist fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 joblib markdown-it-py markupsafe mdurl
multidict numpy packaging pandas pillow propcache protobuf psutil pyarrow pygments python-dateutil pyyaml regex
requests rich safetensors sentencepiece shellingham six tabulate tokenizers tqdm typer typing-extensions
urllib3 wrapt xxhash yarl""".split())
PLATFORMS = ["manylinux_2_28", "manylinux_2_24", "manylinux_2_17", "manylinux2014", "manylinux_2_5", "manylinux1"]


def strip_solvers(wheel):
    """pulp (Snakemake's ILP scheduler, unused with --scheduler greedy) bundles 16 MB of solver binaries."""
    stripped = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if "/solverdir/" in item.filename:
                continue
            data = source.read(item.filename)
            if item.filename.endswith("RECORD"):
                data = b"\n".join(line for line in data.split(b"\n") if b"/solverdir/" not in line)
            target.writestr(item, data)
    stripped.replace(wheel)


def main():
    folder, python_version = Path(sys.argv[1]), sys.argv[2]
    for wheel in sorted((folder / "all").glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if name.lower().replace("_", "-") in IMAGE:
            continue
        if wheel.name.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl")):
            wheel.rename(folder / wheel.name)
        else:  # built for this machine's Python: fetch the GPU's CPython's build of the same version
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", python_version, "--implementation", "cp", "-d", str(folder),
                            *[f"--platform={p}_x86_64" for p in PLATFORMS], f"{name}=={version}"], check=True)
    for wheel in folder.glob("pulp-*.whl"):
        strip_solvers(wheel)
    for leftover in (folder / "all").glob("*"):
        leftover.unlink()
    (folder / "all").rmdir()


if __name__ == "__main__":
    main()
