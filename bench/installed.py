"""pitr as `pip install` (a wheel) would put it, for the per-segment commands in benches.

The dev virtualenv holds pitr as an *editable* install, whose import hook
(``__editable___pitr_finder``) runs at every Python start: about 15 ms that
``python -c pass`` pays too and that users never see. archive_command and
restore_command start one process per segment, so benches run them from a
plain copy: a fresh venv with the package copied and byte-compiled, the dev
venv's site-packages (boto3, ...) reachable through a .pth line (a path added
by a .pth line does not run the .pth hooks inside it), and a console script
like the one pip writes. Same code, same dependencies, no editable hook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installed_copy(base: Path, *, with_deps: bool = True) -> Path:
    """Create ``base/venv-installed``; returns the venv (``bin/pitr`` is the command)."""
    venv = base / "venv-installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    shutil.copytree(ROOT / "pitr", site / "pitr", ignore=shutil.ignore_patterns("__pycache__"))
    if with_deps:
        (site / "pitr-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(site / "pitr")],
                   check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""},
                   capture_output=True)
    exe = venv / "bin" / "pitr"
    exe.write_text(f"#!{venv}/bin/python\nimport sys\nfrom pitr.entry import main\n"
                   "if __name__ == '__main__':\n    sys.exit(main())\n")
    exe.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    for p in [base, *base.parents]:  # the cluster user must reach it
        if p == Path("/"):
            break
        if p.stat().st_mode & 0o005 != 0o005:
            raise SystemExit(f"{p} is not world-traversable; pick another bench directory")
    return venv
