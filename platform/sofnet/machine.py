"""What makes one machine's numbers differ from another's: the facts every run logs as MLflow tags.

Usage::

    from sofnet.machine import fingerprint
    fingerprint()   # {"machine.cpu_model": "AMD EPYC", "machine.aten_capability": "AVX512", "machine.threads": "2",
                    #  ...}
    rank_tags([fingerprint_rank0, fingerprint_rank1])   # {"machine.ranks_differ": "none"} or what differs, per rank
    kernel_level(fingerprint())  # "AMD EPYC, AVX512, 2 threads": what a study's table says its rows ran on

One machine with one seed and one thread count repeats a run bitwise (``tests/test_determinism.py``). Another CPU
runs other kernels (AVX-512 vs AVX2 vs plain C++ in ATen, another oneDNN ISA), whose float rounding differs; a
training run amplifies that into other weights. ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) with
``ONEDNN_MAX_CPU_ISA=AVX2`` makes this machine run those other kernels, which is how the README's cross-CPU checks
were made; the tags say which level a run really used (``machine.aten_capability``), not only what was asked for.
On an AMD EPYC with AVX-512 they reproduced an AVX2-only AMD EPYC's demo to the last printed digit; on Intel, MKL
(the BLAS) is capped apart, by ``MKL_ENABLE_INSTRUCTIONS``, which is tagged too when set.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Dict, Mapping, Sequence

# The environment variables that change which CPU kernels run (asked-for levels; the capability tag says what ran).
# MKL's own cap (the BLAS under matmul, linear layers, the LSTM) is left alone by the other two (bench/kernel_bits.py).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS")


def _cpu() -> tuple[str, str, str]:
    """CPU model name, the vector extensions that pick kernels, and the vendor, family, model and stepping (x86;
    ``""`` elsewhere), from /proc/cpuinfo where there is one.

    Cloud VMs mask the model name: "AMD EPYC" named both a Zen 3 machine without AVX-512 (family 25) and a Zen 5
    with it (family 26) that ran this project's tables; the numbers say which CPU it was."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), "", ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    have = set(flags.group(1).split()) if flags else set()
    vector = ",".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "avx2", "fma") if f in have)
    keys = ("vendor_id", "cpu family", "model", "stepping")
    found = [re.search(rf"^{key}\s*:\s*(\S+)\s*$", text, re.M) for key in keys]
    vendor, family, number, stepping = (m.group(1) if m else "?" for m in found)
    cpu_id = f"{vendor} family {family} model {number} stepping {stepping}" if family != "?" else ""
    return (model.group(1).strip() if model else platform.processor() or platform.machine()), vector, cpu_id


def _onednn() -> str:
    import torch

    found = re.search(r"(?:oneDNN|MKL-DNN) (v[\d.]+)", torch.__config__.show())
    return found.group(1) if found else "none"


def fingerprint() -> Dict[str, str]:
    """``machine.*`` tags: CPU model, its family/model numbers and vector extensions, torch / torchvision / oneDNN
    versions, the ATen CPU capability in use, threads, deterministic-algorithms mode, Python, and the kernel-level
    variables if set. No host name or user: runs are shared."""
    import torch  # here, not at import: a study's bad config is refused before torch loads (~1.5 s)
    import torchvision

    model, vector, cpu_id = _cpu()
    tags = {
        "machine.cpu_model": model,
        "machine.cpu_vector": vector,
        "machine.cpus": str(os.cpu_count()),
        "machine.torch": torch.__version__,
        "machine.torchvision": torchvision.__version__,
        "machine.onednn": _onednn(),
        "machine.aten_capability": torch.backends.cpu.get_cpu_capability(),
        "machine.threads": str(torch.get_num_threads()),
        "machine.interop_threads": str(torch.get_num_interop_threads()),
        "machine.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
        "machine.python": sys.version.split()[0],
    }
    if cpu_id:
        tags["machine.cpu_id"] = cpu_id
    if torch.cuda.is_available():
        tags["machine.gpu"] = torch.cuda.get_device_name(0)
        tags["machine.cuda"] = str(torch.version.cuda)
        tags["machine.cudnn"] = str(torch.backends.cudnn.version())
    for name in KERNEL_ENV:
        if os.environ.get(name):
            tags[f"machine.env.{name}"] = os.environ[name]
    return {k: v[:500] for k, v in tags.items()}


def kernel_level(tags: Mapping[str, str]) -> str:
    """What picked a run's CPU kernels, in one phrase for a table, from its ``machine.*`` tags: the CPU model, the
    ATen capability that ran, oneDNN's and MKL's caps if set, the threads; e.g. ``Intel(R) Xeon(R) Processor, AVX512,
    2 threads`` or ``..., AVX2, ONEDNN_MAX_CPU_ISA=AVX2, 2 threads`` (how the README's cross-CPU rows were made)."""
    parts = [tags.get("machine.cpu_model", "?"), tags.get("machine.aten_capability", "?")]
    for cap in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        if tags.get(f"machine.env.{cap}"):
            parts.append(f"{cap}={tags[f'machine.env.{cap}']}")
    threads = tags.get("machine.threads", "?")
    return ", ".join(parts + [f"{threads} thread{'' if threads == '1' else 's'}"])


def rank_tags(prints: Sequence[Mapping[str, str]]) -> Dict[str, str]:
    """What differs between the ranks of one job (rank order): ``machine.ranks_differ`` (the differing keys, or
    ``none``) and ``machine.rank<r>.<key>`` for each of them. The ``machine.*`` tags are rank 0's; on a cluster of
    mixed CPUs the other ranks run other kernels, so the job repeats bitwise only on the same mix of machines."""
    keys = sorted({k for p in prints for k in p})
    differ = [k for k in keys if len({p.get(k, "") for p in prints}) > 1]
    tags = {"machine.ranks_differ": ",".join(k.removeprefix("machine.") for k in differ) or "none"}
    for key in differ:
        for r, p in enumerate(prints):
            tags[f"machine.rank{r}.{key.removeprefix('machine.')}"] = p.get(key, "")[:500]
    return tags

