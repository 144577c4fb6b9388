"""Every repository path the README, the docs and the code's comments name exists: results move between
dated benchmark folders, and a reader who follows a stale path finds nothing."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w/.$-])((?:benchmarks|docs|configs|scripts|tests)/[\w./-]*\w)")
WRITTEN_BY_RUNS = ("tests/artifacts/",)  # written by a run, not committed


def named_paths():
    sources = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/**/README.md"),
               *ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/*.sh")]
    for source in sources:
        for match in PATH.finditer(source.read_text(encoding="utf-8")):
            path = match.group(1)
            if any(ch in path for ch in "*{") or path.startswith(WRITTEN_BY_RUNS):
                continue
            yield source.relative_to(ROOT), path


def test_every_named_path_exists():
    missing = sorted({f"{source}: {path}" for source, path in named_paths() if not (ROOT / path).exists()})
    assert not missing, "\n".join(missing)
