"""The console of a driver whose output goes to a file: no colour codes (``sofnet.console.setup``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = "from sofnet.console import setup; setup(); import os; print(os.environ.get('RAY_COLOR_PREFIX'))"
# a real local Ray started by a driver: its "Started a local Ray instance" line and a worker's printed line
RAY = """
import sys
import time


class Seen:  # the driver's stdout, remembered: Ray streams workers' lines a moment after they print
    def __init__(self, sink):
        self.sink, self.text = sink, ""

    def write(self, text):
        self.text += text
        return self.sink.write(text)

    def flush(self):
        self.sink.flush()


sys.stdout = seen = Seen(sys.stdout)

from sofnet.console import setup
setup()
import ray
ray.init(address="local", num_cpus=1)  # a new Ray, never one Ray finds by itself (an earlier test's address)
ray.get(ray.remote(lambda: print("from a worker")).options(num_cpus=0).remote())


@ray.remote(num_cpus=0)
class Job:
    def say(self, seed):
        print(f"t-seed{seed}/stage1 epoch 1/1 done")


jobs = [Job.remote() for _ in range(3)]  # three processes printing lines that differ only in a number
ray.get([job.say.remote(seed) for seed, job in enumerate(jobs, 1)])
# wait (at most 20 s) for the workers' lines before shutting down (it would cut the stream); a dropped line never comes
for _ in range(200):
    if all(line in seen.text for line in ("from a worker", "t-seed1/", "t-seed2/", "t-seed3/")):
        break
    time.sleep(0.1)
ray.shutdown()
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_COLOR_PREFIX"}
    env.update(RAY_AUTH_MODE="disabled", **extra)
    return env


@pytest.mark.parametrize("user, want", [(None, "0"), ("1", "1")])
def test_ray_colour_codes_are_off_when_the_console_is_a_file(user: str, want: str) -> None:
    """Ray's driver wraps each worker line in colour codes unless ``RAY_COLOR_PREFIX=0``; a user's own choice stays."""
    done = subprocess.run([sys.executable, "-c", SHOW], env=_env(**({"RAY_COLOR_PREFIX": user} if user else {})),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == want


def test_a_driver_logging_to_a_file_shows_ray_without_colour_codes(tmp_path) -> None:
    """What a user reads in `python jobs/... > run.log`: Ray's own start line and the workers' output, plain, and each
    job's line though three processes print it within a second (Ray would collapse them)."""
    done = subprocess.run([sys.executable, "-c", RAY], env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Started a local Ray instance" in out and "from a worker" in out, out[-3000:]
    assert "\x1b[" not in out, out[-3000:]
    for seed in (1, 2, 3):  # Ray's deduplication would print one of them and collapse or drop the others
        assert f"t-seed{seed}/stage1 epoch 1/1 done" in out, out[-3000:]
