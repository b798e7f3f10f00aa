"""docs/configuration.md's reference is generated from the config model and current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from pitr.config import schema

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_reference.py"


def _gen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_key_is_documented_with_its_env_name_and_doc() -> None:
    text = _gen().render()
    for info in schema():
        shown = "check" if (info.section, info.name) == ("verify", "checks") else info.name
        assert f"| `{shown}` |" in text, info.dotted
        assert info.doc.split(",")[0].replace("|", "\\|") in text, info.dotted
        if info.section != "verify" or info.name != "checks":
            assert f"`{info.env}`" in text
    for section in {i.section for i in schema() if i.section}:
        assert f"## `[{section}]`" in text


def test_secrets_are_flagged_and_durations_readable() -> None:
    text = _gen().render()
    line = next(ln for ln in text.splitlines() if "`secret_access_key`" in ln)
    assert "secret" in line and "masked" in line
    line = next(ln for ln in text.splitlines() if "PITR_MONITOR_MAX_BACKUP_AGE" in ln)
    assert '"26h"' in line


def test_replace_section_keeps_the_rest_of_the_file() -> None:
    gen = _gen()
    doc = f"intro\n{gen.BEGIN}\nold stuff\n{gen.END}\noutro\n"
    out = gen.replace_section(doc, "NEW\n")
    assert out == f"intro\n{gen.BEGIN}\nNEW\n{gen.END}\noutro\n"
    assert gen.replace_section(out, "NEW\n") == out


def test_check_mode_flags_a_stale_file(tmp_path: Path) -> None:
    gen = _gen()
    stale = tmp_path / "configuration.md"
    stale.write_text(f"x\n{gen.BEGIN}\nold\n{gen.END}\n")
    assert gen.main(["--check", "--doc", str(stale)]) == 1
    assert gen.main(["--doc", str(stale)]) == 0
    assert gen.main(["--check", "--doc", str(stale)]) == 0


def test_the_committed_reference_is_current() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, (
        proc.stderr + "\ndocs/configuration.md no longer matches pitr/config.py: "
        "run `python scripts/gen_config_reference.py` and commit docs/configuration.md")
