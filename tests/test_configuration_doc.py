"""Check docs/configuration.md against the config loader, so the reference stays complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cronledger.settings import ALLOWED_KEYS, load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# The heading of the section that documents each table of ALLOWED_KEYS.
SECTIONS = {
    "": "## Top level",
    "defaults": "## `[defaults]`",
    "services.*": "## `[services.NAME]`",
    "scheduler": "## `[scheduler]`",
    "server": "## `[server]`",
    "alerts": "## `[alerts]`",
}


def section(heading: str) -> str:
    """Return the text of the section under ``heading``, up to the next level-2 heading."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


@pytest.mark.parametrize("table", sorted(ALLOWED_KEYS), ids=lambda table: table or "top")
def test_every_key_documented(table: str) -> None:
    assert table in SECTIONS, f"table [{table}] has no section in docs/configuration.md"
    text = section(SECTIONS[table])
    keys = ALLOWED_KEYS[table]
    if table == "":
        # The top level's sub-tables are documented as sections of their own.
        keys = keys - {"defaults", "services", "server", "alerts", "scheduler"}

    for key in sorted(keys):
        assert f"| `{key}` |" in text, f"key {key} of [{table}] is not in its table"


def test_complete_example_loads(tmp_path: Path) -> None:
    example = re.findall(r"```toml\n(.*?)```", section("## A complete example"), re.DOTALL)
    assert len(example) == 1, "expected one TOML block in the complete example"
    path = tmp_path / "cronledger.toml"
    path.write_text(example[0])

    config = load_config(path)

    assert set(config.jobs) == {"nightly-report", "cleanup"}, f"jobs: {set(config.jobs)}"
    assert config.service_alerts["cleanup"] == (), "alerts = [] did not silence cleanup"
