"""Which kernel-level variables change which operation's bits on this machine?

A run trained on one CPU differs from the same run on another because their kernels round differently
(README, "Determinism"). The variables that pick kernels are torch's ATen level (``ATEN_CPU_CAPABILITY``),
oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``: convolutions) and MKL's own (``MKL_ENABLE_INSTRUCTIONS``: the BLAS
under matmul, linear layers and the LSTM's gates). Each setting below runs in its own process (the variables are
read once, at load), single-threaded, on the same seeded inputs, and prints a hash of each operation's output:
equal hashes are bitwise-equal outputs. What it tells: which of the three variables an emulation of another CPU
needs on this one (an MKL that ignores its cap here, e.g. on AMD, changes nothing when set).

    python bench/kernel_bits.py              # the default settings
    python bench/kernel_bits.py --env "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2"   # add your own
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from typing import Dict, List

from sofnet.machine import KERNEL_ENV  # the variables that pick kernels, as every run's tags name them

SETTINGS = ["", "MKL_ENABLE_INSTRUCTIONS=AVX2", "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2",
            "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2",
            "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2"]
OPS = ("matmul", "linear", "conv", "lstm")


def probe() -> Dict[str, str]:
    """Hashes of four operations' outputs on seeded inputs (run in the child process)."""
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(257, 513), torch.randn(513, 129)
    linear, conv = torch.nn.Linear(513, 129), torch.nn.Conv2d(3, 16, 3)
    lstm, frames, seq = torch.nn.LSTM(64, 32, batch_first=True), torch.randn(64, 3, 32, 32), torch.randn(8, 10, 64)
    with torch.no_grad():
        outs = (a @ b, linear(a), conv(frames), lstm(seq)[0])
    hashes = {op: hashlib.sha1(o.contiguous().numpy().tobytes()).hexdigest()[:10] for op, o in zip(OPS, outs)}
    return {"aten": torch.backends.cpu.get_cpu_capability(), **hashes}


def run(setting: str) -> Dict[str, str]:
    """:func:`probe` in a new process under ``setting`` (``NAME=value`` words), one thread."""
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}  # only what the setting asks for
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(word.split("=", 1) for word in setting.split())
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import kernel_bits; "
            "print(json.dumps(kernel_bits.probe()))")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", action="append", default=[], help="another setting: NAME=value words (repeatable)")
    args = parser.parse_args(argv)
    rows = [(s, run(s)) for s in SETTINGS + args.env]
    print(f"| setting | ATen level | {' | '.join(OPS)} |")
    print("|---|---|" + "---|" * len(OPS))
    for setting, r in rows:
        print(f"| {setting or '(none: native)'} | {r['aten']} | {' | '.join(r[op] for op in OPS)} |")


if __name__ == "__main__":
    main()
