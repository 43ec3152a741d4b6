"""Helpers of the data_prep tests: run a command as a real subprocess, read back the samples of a shard folder.

    result = run_module("data_prep.activitynet", "--annotations", ..., "--no-ray")   # CompletedProcess, text
    metas = shard_metas(out)                                                          # {video id: {key}.json}
    times, frames = decoded_frames(video)                                             # every frame, RGB, and its time
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import webdataset as wds


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args...`` with this interpreter (a local Ray needs no token), output captured."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def shard_metas(out: Path) -> dict[str, dict]:
    """The ``{key}.json`` of every sample in the folder's shards, by video id."""
    metas = {}
    for shard in sorted(out.glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            meta = json.loads(sample["json"])
            metas[meta["id"]] = meta
    return metas


def decoded_frames(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """Every frame of an encoded video as an RGB ``uint8`` array [H, W, 3], with its time in seconds."""
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [float(f.time) for f in frames], [f.to_ndarray(format="rgb24") for f in frames]
