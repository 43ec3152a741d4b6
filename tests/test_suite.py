"""The suite's own guard: too little free disk for it is one line (pytest's usage error, exit 4) before any test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_too_little_disk_is_one_line_before_any_test(repo_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SOFNET_TESTS_MIN_FREE_GB": "1e9", "TMPDIR": str(tmp_path)}  # no disk has 1e9 GB free
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_config.py", "-q", "-p", "no:cacheprovider"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 4 and len(out.splitlines()) == 1, out[-3000:]
    assert out.startswith(f"ERROR: {tmp_path}: ") and "GB free" in out and "asks for 1e+09 GB" in out, out
    assert " passed" not in done.stdout and not list(tmp_path.iterdir())  # nothing ran, the session folder is gone
