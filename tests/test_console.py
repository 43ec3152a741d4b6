"""The console of a driver whose output goes to a file: no colour codes (``sofnet.console.setup``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = "from sofnet.console import setup; setup(); import os; print(os.environ.get('RAY_COLOR_PREFIX'))"


@pytest.mark.parametrize("user, want", [(None, "0"), ("1", "1")])
def test_ray_colour_codes_are_off_when_the_console_is_a_file(user: str, want: str) -> None:
    """Ray's driver wraps each worker line in colour codes unless ``RAY_COLOR_PREFIX=0``; a user's own choice stays."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_COLOR_PREFIX"}
    if user is not None:
        env["RAY_COLOR_PREFIX"] = user
    done = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == want
