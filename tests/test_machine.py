"""The machine fingerprint every run carries: what ran, not only what was asked for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from sofnet.machine import fingerprint

REPO = Path(__file__).resolve().parents[1]


def test_fingerprint_names_kernels_versions_and_threads() -> None:
    tags = fingerprint()
    assert tags["machine.torch"] == torch.__version__
    assert tags["machine.aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["machine.threads"] == str(torch.get_num_threads())
    assert tags["machine.cpu_model"] and tags["machine.onednn"].startswith("v")
    assert all(k.startswith("machine.") and isinstance(v, str) and len(v) <= 500 for k, v in tags.items())
    assert not any("host" in k for k in tags)  # runs are shared: no host name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "cpu family" in cpuinfo.read_text():  # x86: the numbers behind a masked model name
        assert re.fullmatch(r"\S+ family \d+ model \d+ stepping \d+", tags["machine.cpu_id"]), tags


def test_forced_kernel_level_is_what_the_tag_says() -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = "import json; from sofnet.machine import fingerprint; print(json.dumps(fingerprint()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    tags = json.loads(out.stdout)
    assert tags["machine.aten_capability"] == "DEFAULT"
    assert tags["machine.env.ATEN_CPU_CAPABILITY"] == "default" and tags["machine.env.ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_rank_tags_name_what_differs_between_ranks() -> None:
    from sofnet.machine import rank_tags

    same = {k: v for k, v in fingerprint().items() if not k.startswith("machine.env.")}  # also under forced kernels
    assert rank_tags([same, dict(same)]) == {"machine.ranks_differ": "none"}
    other = {**same, "machine.aten_capability": "AVX2-on-rank1", "machine.env.ATEN_CPU_CAPABILITY": "avx2"}
    tags = rank_tags([same, other, same])
    assert tags["machine.ranks_differ"] == "aten_capability,env.ATEN_CPU_CAPABILITY"
    assert tags["machine.rank1.aten_capability"] == "AVX2-on-rank1"
    assert tags["machine.rank0.env.ATEN_CPU_CAPABILITY"] == ""
    assert tags["machine.rank2.aten_capability"] == same["machine.aten_capability"]


def test_kernel_bits_probe_repeats_and_runs_at_the_asked_level() -> None:
    """``bench/kernel_bits.py``: the same setting twice gives the same hashes (its answer is the variables', not
    noise); a forced level is the level its child ran at."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import kernel_bits
    finally:
        sys.path.remove(str(REPO / "bench"))
    native, again = kernel_bits.run(""), kernel_bits.run("")
    assert native == again and set(native) == {"aten", *kernel_bits.OPS}
    assert kernel_bits.run("ATEN_CPU_CAPABILITY=default")["aten"] == "DEFAULT"
