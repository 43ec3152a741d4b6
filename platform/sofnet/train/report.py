"""The results table of a training run (the layout of the paper's Tables A/B), read back from MLflow.

Usage::

    from sofnet.train.report import results_table, stage_metrics
    metrics = stage_metrics("sqlite:///mlflow.db", "sofnet-demo", "demo")   # {"stage1": {...}, "stage2": {...}}
    print(results_table([("TSN", metrics["stage1"]), ("SoF-Net", metrics["stage2"])]))

Each method gets two rows, without and with early termination (ET), from the ``val/*`` and ``val/et/*`` metrics
of its last evaluated epoch (computed on the real skipping path).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

from mlflow.tracking import MlflowClient


def stage_metrics(tracking_uri: str, experiment: str, run_name: str) -> Dict[str, Dict[str, float]]:
    """Latest metrics of the newest MLflow run of each stage of Ray run ``run_name``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], f"tags.ray_run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"])
    out: Dict[str, Dict[str, float]] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("stage", "?"), dict(run.data.metrics))
    return out


def results_table(methods: Sequence[Tuple[str, Mapping[str, float]]], primary: str = "mAP") -> str:
    """A Markdown table: method, ET, ``primary`` (%), top-1 (%), GFLOPs/V, frame usage, GFLOPs vs the first row."""
    rows: List[str] = [f"| method | ET | {primary} (%) | top-1 (%) | GFLOPs/V | frame usage | GFLOPs vs "
                       f"{methods[0][0]} |", "|---|---|---|---|---|---|---|"]
    base = methods[0][1].get("val/gflops_per_video")
    for name, m in methods:
        for et, prefix in (("no", "val/"), ("yes", "val/et/")):
            if f"{prefix}{primary}" not in m:
                continue
            gf = m[f"{prefix}gflops_per_video"]
            rel = f"{100 * gf / base:.0f}%" if base else "-"
            top1 = 100 * m.get(prefix + "top1", float("nan"))
            rows.append(f"| {name} | {et} | {100 * m[prefix + primary]:.1f} | {top1:.1f} | {gf:.3f} | "
                        f"{100 * m[prefix + 'frame_usage']:.1f}% | {rel} |")
    return "\n".join(rows)
