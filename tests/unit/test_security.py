"""Security promises checked on the source: no pickle loads, no credentials in the package."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mitune_ray"


def test_nothing_is_unpickled_from_storage():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bpickle\.loads?\(|\btorch\.load\(|\bcloudpickle\.load", line):
                if "weights_only=True" not in line:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert offenders == []


def test_package_files_hold_no_credentials():
    pattern = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*=\s*['\"][^'\"]+)", re.I)
    hits = [str(p) for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".json"}
            and pattern.search(p.read_text(errors="ignore"))]
    assert hits == []
