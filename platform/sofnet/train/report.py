"""The results of a training run as the paper's Tables A/B lay them out: every row from the one evaluator.

Usage (what ``jobs/results_table.py`` does)::

    from sofnet.train.report import evaluate_run, results_table
    rows = evaluate_run(cfg, run_dir="runs/demo", out_dir="runs/demo-eval")   # [(method, metrics), ...]
    table = results_table(rows)                                                # Markdown, printed by the job

Each stage's best epoch (``<run>/best/<stage>``: the TSN/TSM baseline of stage 1, SoF-Net of stage 2) is evaluated
by :func:`sofnet.evaluation.evaluate_model` on the same validation videos, with and without early exit, so every
row of the table comes from the same code, the same videos and the checkpoints of one named run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from sofnet import checkpoint, storage
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import evaluate_model

logger = logging.getLogger(__name__)

METHOD_NAMES = {("stage1", "tsn"): "TSN", ("stage1", "tsm"): "TSM", ("stage2", "sofnet"): "SoF-Net",
                ("stage2", "sofnet_tsm"): "SoF-Net^TSM", ("stage1", "arnet"): "TSN (AR-Net warm-up)",
                ("stage2", "arnet"): "AR-Net (joint)", ("stage3", "arnet"): "AR-Net"}


def evaluate_run(cfg: Any, run_dir: str | Path, out_dir: str | Path, device: str = "auto",
                 stages: Sequence[str] = checkpoint.STAGE_ORDER,
                 et_cache: bool = False) -> List[Tuple[str, Dict[str, Any]]]:
    """Evaluate the best epoch of every stage of a run (or of ``stages``); returns ``[(method, report), ...]``.

    Each report is ``jobs/evaluate.py``'s ``metrics.json`` (written to ``<out_dir>/<stage>/``) plus ``runs``: the
    MLflow run ids of the training job (``job`` and each stage), read from the checkpoint. With ``et_cache``, each
    stage's early-exit cache too (``<out_dir>/<stage>/et_cache``, from the evaluation's own pass without early exit;
    a stage that cannot exit early raises ``ValueError`` before its pass).
    """
    et = EarlyExit.from_config(cfg.early_exit)
    rows = []
    for stage in (s for s in checkpoint.STAGE_ORDER if s in stages):
        best = storage.join(run_dir, checkpoint.BEST, stage)
        if not storage.is_dir(best):
            continue
        model, spec = checkpoint.load_network(best)
        arch = spec["model"]["arch"]
        if stage == "stage1" and spec["model"].get("shift") == "causal":
            name = "TSM (causal)"
        else:
            name = METHOD_NAMES.get((stage, arch), arch)
        report = evaluate_model(model, cfg, out_dir=Path(out_dir) / stage, et=et, device=device,
                                et_cache=Path(out_dir) / stage / "et_cache" if et_cache else "", source=str(run_dir))
        report["runs"] = spec["meta"].get("runs", {})
        report["stage"], report["method"] = stage, name
        rows.append((name, report))
    if not rows:
        raise checkpoint.CheckpointError(f"{run_dir}: no best/<stage> checkpoint (has the run finished an epoch?)")
    return rows


def _pct(m: Mapping[str, float], key: str) -> str:
    return f"{100 * m[key]:.1f}" if key in m else "-"


def results_table(methods: Sequence[Tuple[str, Mapping[str, float]]], primary: str = "mAP") -> str:
    """A Markdown table: method, ET, ``primary`` (%), top-1 (%), GFLOPs/V, frame usage, GFLOPs vs the first row, and
    the share of background / action frames stopped by layer2 (the gates' job: stop what carries no action)."""
    rows: List[str] = [f"| method | ET | {primary} (%) | top-1 (%) | GFLOPs/V | frame usage | GFLOPs vs "
                       f"{methods[0][0]} | stopped by layer2: background / action |",
                       "|---|---|---|---|---|---|---|---|"]
    base = methods[0][1].get("val/gflops_per_video")
    for name, m in methods:
        for et, prefix in (("no", "val/"), ("yes", "val/et/")):
            if f"{prefix}{primary}" not in m:
                continue
            gf = m[f"{prefix}gflops_per_video"]
            rel = f"{100 * gf / base:.0f}%" if base else "-"
            stops = (f"{_pct(m, prefix + 'stop_rate/background/block2')}% / "
                     f"{_pct(m, prefix + 'stop_rate/action/block2')}%")
            rows.append(f"| {name} | {et} | {100 * m[prefix + primary]:.1f} | {_pct(m, prefix + 'top1')} | {gf:.3f} | "
                        f"{100 * m[prefix + 'frame_usage']:.1f}% | {rel} | {stops} |")
    return "\n".join(rows)
