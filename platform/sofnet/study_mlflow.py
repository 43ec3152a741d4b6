"""A study in MLflow: one parent run per study (reopened when the study resumes) with the table and every number,
and one child run per (method, seed) with that row's metrics and the training run's id (:mod:`sofnet.study` calls
it once the rows are computed).

Usage::

    from sofnet.study_mlflow import log_study
    run_id = log_study(study, cfg, summary, records, table)     # the parent run's id
    trained_on(cfg, record)          # the kernel levels of a seed's training runs, from their machine.* tags
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence

from sofnet.machine import kernel_level
from sofnet.study_recipe import study_dir
from sofnet.study_table import ROWS, row_metrics


def log_study(study: Any, cfg: Any, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
              table: str) -> str:
    """The parent run (reopened on a resumed study) and one child per (method, seed); returns the parent's id."""
    from sofnet.train.tracking import resolve_tracking_uri
    from sofnet.tune.report import SweepRun, log_metrics

    uri = resolve_tracking_uri(study.mlflow.tracking_uri or cfg.mlflow.tracking_uri)
    parent = SweepRun.open(study, uri, study_dir(study))
    report_of = {name: report for name, _, report, _ in ROWS}
    for record in records:
        for method, row in row_metrics(record, study.methods).items():
            report = record["reports"][report_of[method]]
            stage = report.get("stage", report_of[method])
            stage1_run = record.get("stage1_run", record["run"])
            run = {"arnet": record.get("arnet_run", ""), "stage1": stage1_run, "action_frames": stage1_run}.get(
                report_of[method], record["run"])
            # another AR-Net job (arnet_name) is another child: a child's params (its run_dir) are written once
            label = f"{method} {study.arnet_name}" if method == "AR-Net" and study.arnet_name != "arnet" else method
            child = parent.child(f"{label}|seed{record['seed']}", f"{label} seed {record['seed']}",
                                 {"method": method, "seed": record["seed"], "run_dir": run})
            parent.client.set_tag(child, "training_run", report["runs"].get(stage, ""))
            log_metrics(parent.client, child, {f"study/{k}": v for k, v in row.items()})
            parent.client.set_terminated(child)
    means = {f"study/{method}/{c}": v[0] for method, r in summary["rows"].items() for c, v in r.items()}
    log_metrics(parent.client, parent.run_id, {k.replace(" + ", "_").replace(" ", "_"): v for k, v in means.items()})
    parent.finish({"study_table.md": table})
    parent.client.log_dict(parent.run_id, {"summary": summary}, "study.json")
    return parent.run_id


def trained_on(cfg: Any, record: Mapping[str, Any]) -> List[str]:
    """The kernel levels of the training runs behind the record's rows, from their ``machine.*`` MLflow tags (each
    stage run has them; a run the store no longer has, or one from before the tags, counts as unknown)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sofnet.train.tracking import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(cfg.mlflow.tracking_uri))
    levels = set()
    for run_id in {i for report in record["reports"].values() for k, i in report.get("runs", {}).items() if k != "job"}:
        try:
            tags = client.get_run(run_id).data.tags
        except MlflowException:
            continue
        if "machine.aten_capability" in tags:
            levels.add(kernel_level(tags))
    return sorted(levels)
