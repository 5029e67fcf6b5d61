"""environment.yml, generated from pyproject.toml so that the two routes cannot drift.

`python -m mlplat.envfile` rewrites environment.yml; `--check` exits 1 when it is stale (CI runs it
through the test suite).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def render(pyproject: Path = ROOT / "pyproject.toml") -> str:
    data = tomllib.loads(pyproject.read_text())
    proj = data["project"]
    deps = proj["dependencies"] + [d for extra in ("test", "train") for d in proj["optional-dependencies"][extra]]
    py = proj["requires-python"].lstrip(">=")
    lines = ["# Generated from pyproject.toml by `python -m mlplat.envfile`; do not edit by hand.",
             "name: mlplat", "channels:", "  - conda-forge", "dependencies:", f"  - python={py}", "  - pip",
             "  - pip:"]
    lines += [f"      - {d}" for d in deps]
    lines.append("      - -e .")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    target = ROOT / "environment.yml"
    text = render()
    if "--check" in argv:
        if not target.exists() or target.read_text() != text:
            print("environment.yml is stale: run `python -m mlplat.envfile`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
