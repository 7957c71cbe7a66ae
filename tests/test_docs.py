"""The README's test command is what CI runs, and the config reference is current."""

from __future__ import annotations

import re
from pathlib import Path

from fedcascade.config_reference import reference

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_config_reference_is_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == reference(), (
        "regenerate: python -m fedcascade.config_reference > docs/config.md"
    )
