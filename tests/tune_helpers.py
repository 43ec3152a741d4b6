"""Helpers of the sweep tests: real synthetic shards, a real SoF-Net checkpoint whose gates stop frames, a Ray head."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

from helpers import gated
from process_helpers import RAY_GRACE, stop_process_group
from sofnet import checkpoint as checkpoints  # not `checkpoint`: the helper below has that name
from sofnet.config import load_config
from sofnet.data import make_eval_loader
from sofnet.session import free_ports
from sofnet.train.cli import ensure_synthetic_shards
from sofnet.train.pyfunc import write_artifacts

REPO = Path(__file__).resolve().parents[1]
SEGMENTS, SIZE, CLASSES = 4, 64, 3


def shards(root: Path) -> Path:
    """Synthetic ActivityNet-format shards (data_prep), 24 videos of 3 classes: a few validation videos."""
    return ensure_synthetic_shards(root, videos=24, classes=CLASSES, seed=5)


def eval_config(shard_dir: Path):
    """The demo config shrunk to the tiny model and pointed at ``shard_dir``."""
    return load_config(REPO / "jobs/configs/demo.yaml", [
        f"data.train_shards={shard_dir}", f"data.val_shards={shard_dir}", f"model.num_classes={CLASSES}",
        f"model.num_segments={SEGMENTS}", f"model.input_size={SIZE}", "data.resize=73", "data.batch_size=3",
        "data.num_workers=0"])


def checkpoint(shard_dir: Path, out: Path, arch: str = "sofnet") -> Path:
    """A checkpoint directory (``model.json`` + ``weights.pt``, as training writes them) of a real SoF-Net whose
    gates are calibrated on the real validation clips to stop frames at every block, with a confident classifier
    (so early exit fires at the thresholds of Table C)."""
    loader = make_eval_loader(shard_dir, num_segments=SEGMENTS, input_size=SIZE, resize=73, batch_size=64,
                              num_workers=0, num_classes=CLASSES, subset="validation")
    x = next(iter(loader))["frames"].float()
    model = gated(arch, x, survival=(0.9, 0.8, 0.7, 0.6, 0.5), seed=3, fc_scale=0.5, classes=CLASSES,
                  gate_hidden=64)
    write_artifacts(model.float(), str(out), {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"})
    checkpoints.seal(out)  # a checkpoint directory as training writes it: loads verify the seal
    return out


def ray_head(temp_dir: Path, cpus: int = 2) -> Iterator[Dict[str, str]]:
    """A Ray head of our own (``ray start --block``, its own temp dir: no other session's ``ray.init()`` finds it);
    yields the environment for job subprocesses and stops its process group afterwards."""
    # Every port it would otherwise take at a fixed default (client server 10001, dashboard 8265, agent 52365) is a
    # free one: `make test TEST_WORKERS=2` runs two test modules at once, and two heads on one port make `ray start
    # --block` exit.
    port, client, dash, agent = free_ports(4)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    log = open(temp_dir.with_suffix(".log"), "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             f"--ray-client-server-port={client}", f"--dashboard-port={dash}",
                             f"--dashboard-agent-listen-port={agent}",
                             f"--num-cpus={cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = (temp_dir / "ray_current_cluster")
        deadline = time.monotonic() + 120
        while not address.is_file() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {temp_dir.with_suffix('.log').read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2)
        yield {**env, "RAY_ADDRESS": address.read_text().strip()}
    finally:
        stop_process_group(proc, grace=RAY_GRACE)
        log.close()


def run_job(args: list, env: Dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a job script with the repo's Python; output captured (shown on failure by the caller)."""
    return subprocess.run([sys.executable, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
