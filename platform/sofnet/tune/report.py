"""MLflow for sweeps: one parent run per sweep, a child run per trial, and the tables and figure at the end.

Usage::

    parent = SweepRun.open(sweep, tracking_uri, sweep_dir(sweep))     # reopened from sweep_dir on a resumed sweep
    child = parent.child(trial_id, "rho=0.99 t_min=4", params)          # tagged mlflow.parentRunId
    text = table_c(rows)                                                # Table C layout, markdown
    fig = pareto_figure(rows, x="val/gflops_per_video", y="val/mAP", label=...)
    parent.finish(tables={"table_c.md": text}, figure=fig, best=rows[0])
    register_run_model(tracking_uri, run_id, "sofnet-sweep", alias="best")

The training job's own runs become children by passing ``parent.child_tags(trial_id)`` as their tags.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sofnet.train.ray_job import git_commit
from sofnet.train.tracking import check_tracking

logger = logging.getLogger(__name__)

PARENT_FILE = "parent_run.json"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "tune_trial_id"


class SweepRun:
    """The parent run of a sweep and the helpers that hang trials under it."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_id: str, name: str) -> None:
        self.client, self.experiment_id, self.run_id, self.name = client, experiment_id, run_id, name

    @classmethod
    def open(cls, sweep: Any, tracking_uri: str, directory: Path) -> "SweepRun":
        """Create the parent run, or reopen the one recorded in ``directory`` (a resumed sweep keeps its parent)."""
        experiment_id = check_tracking(tracking_uri, sweep.mlflow.experiment)
        client = MlflowClient(tracking_uri=tracking_uri)
        record = Path(directory) / PARENT_FILE
        if record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            client.update_run(run_id, status="RUNNING")
            logger.info("MLflow: resumed sweep run %s", run_id)
            return cls(client, experiment_id, run_id, sweep.name)
        run = client.create_run(experiment_id, run_name=f"sweep {sweep.name}",
                                tags={"sweep": sweep.name, "sweep_kind": sweep.kind, "git_commit": git_commit()})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[_param(k, v) for k, v in _flat(sweep).items()])
        client.log_text(run_id, OmegaConf.to_yaml(sweep), "sweep.yaml")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id}))
        logger.info("MLflow: sweep run %s in experiment %s at %s", run_id, sweep.mlflow.experiment, tracking_uri)
        return cls(client, experiment_id, run_id, sweep.name)

    def child_tags(self, trial_id: str) -> Dict[str, str]:
        """Tags that make a run a child of this sweep, found again by trial id."""
        return {PARENT_TAG: self.run_id, "sweep": self.name, TRIAL_TAG: trial_id}

    def children(self) -> List[Any]:
        """The child runs (every trial's runs), oldest first."""
        return self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.run_id}'",
                                       order_by=["attributes.start_time ASC"], max_results=10000)

    def child(self, trial_id: str, run_name: str, params: Mapping[str, Any]) -> str:
        """The child run of ``trial_id``: the existing one (a trial restarted after a resume) or a new one."""
        for run in self.children():
            if run.data.tags.get(TRIAL_TAG) == trial_id:
                return run.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=self.child_tags(trial_id))
        self.client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in params.items()])
        return run.info.run_id

    def finish(self, tables: Mapping[str, str], figure: Any = None, best: Optional[Mapping[str, Any]] = None,
               records: Optional[Sequence[Mapping[str, Any]]] = None) -> None:
        """Log the tables (text artifacts), the figure (then closed), the trial records (a JSON table) and the best
        trial; mark the sweep run finished."""
        for name, text in tables.items():
            self.client.log_text(self.run_id, text, name)
        if figure is not None:
            import matplotlib.pyplot as plt

            self.client.log_figure(self.run_id, figure, "pareto.png")
            plt.close(figure)
        if records:
            columns = sorted({k for r in records for k in r})
            self.client.log_table(self.run_id, {c: [r.get(c) for r in records] for c in columns}, "trials.json")
        if best:
            metrics = {f"best/{k}": float(v) for k, v in best.items() if isinstance(v, (int, float))}
            self.client.log_batch(self.run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
            self.client.set_tag(self.run_id, "best_trial", str(best.get("trial_id", "")))
        self.client.set_terminated(self.run_id, "FINISHED")


def _flat(sweep: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and v and k != "points":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(sweep, resolve=True), "sweep.")
    return out


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:500])


def _metric(key: str, value: float, step: int = 0) -> Any:
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log scalars in one batch (replayed trials have one step)."""
    client.log_batch(run_id, metrics=[_metric(k, v, step) for k, v in metrics.items()])


def pareto_front(points: Sequence[tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats (cost not higher and accuracy not lower, one strictly), by cost."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points)
                        if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pareto_figure(rows: Sequence[Mapping[str, Any]], *, x: str, y: str, label: Callable[[Mapping[str, Any]], str],
                  title: str, xlabel: str = "GFLOPs per video", ylabel: str = "mAP (%)") -> Any:
    """Accuracy (``y``, a fraction, drawn in %) against cost (``x``) for every row, the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(r[x]), float(r[y]) * 100) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", label="trials", zorder=2)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:red", marker="o", zorder=3,
            label="Pareto front")
    for r, (px, py) in zip(rows, pts):
        ax.annotate(label(r), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v) * scale:.{digits}f}"


def table_d(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table D: alpha, beta (none = L_pg off), mAP (%) and GFLOPs/V without and with early exit, and the epochs the
    trial's last stage trained of those planned (``epochs_trained``/``epochs_planned``; a row stopped early, by ASHA
    or a failure, says "stopped early": its figures are not those of a full run), markdown."""
    lines = ["| alpha | beta | mAP (%) | GFLOPs/V | mAP ET (%) | GFLOPs/V ET | epochs | trial |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beta = "none" if r.get("loss.beta") is None else _fmt(r["loss.beta"])
        lines.append(f"| {_fmt(r.get('loss.alpha'))} | {beta} | {_fmt(r.get('val/mAP'), 100)} | "
                     f"{_fmt(r.get('val/gflops_per_video'), digits=4)} | {_fmt(r.get('val/et/mAP'), 100)} | "
                     f"{_fmt(r.get('val/et/gflops_per_video'), digits=4)} | {_epochs(r)} | {r.get('trial_id', '')} |")
    return "\n".join(lines) + "\n"


def _epochs(row: Mapping[str, Any]) -> str:
    trained, planned = row.get("epochs_trained"), row.get("epochs_planned")
    if trained is None or planned is None:
        return "-"
    return f"{trained}/{planned}" + (" stopped early" if trained < planned else "")


MODE_NOTE = {"reached": "ours: T_min frames that reached the classifier, max-softmax >= rho",
             "official": "the official code: time index > T_min - 1, probability > rho"}


def table_c(rows: Sequence[Mapping[str, Any]], mAP: str = "val/et/mAP",
            gflops: str = "val/et/gflops_per_frame") -> str:
    """Table C: rho down, T_min across, each cell ``mAP (%) / GFLOPs per frame``; at every rho one row per T_min
    counting mode (``early_exit.mode``: ours, ``reached``, first, then ``official``), so the two sit side by side."""
    modes = sorted({r.get("early_exit.mode", "reached") for r in rows}, key=lambda m: (m != "reached", m))
    rhos = sorted({float(r["early_exit.rho"]) for r in rows})
    tmins = sorted({int(r["early_exit.t_min"]) for r in rows})
    cell = {(float(r["early_exit.rho"]), int(r["early_exit.t_min"]), r.get("early_exit.mode", "reached")): r
            for r in rows}
    out = ["cells: mAP (%) / GFLOPs per frame; counting " + "; ".join(f"{m} = {MODE_NOTE.get(m, m)}" for m in modes),
           "", "| rho | counting \\ T_min | " + " | ".join(str(t) for t in tmins) + " |",
           "|---" * (len(tmins) + 2) + "|"]
    for rho in rhos:
        for mode in modes:
            cells = [f"{_fmt(cell[rho, t, mode][mAP], 100)} / {_fmt(cell[rho, t, mode][gflops], digits=4)}"
                     if (rho, t, mode) in cell else "-" for t in tmins]
            out.append(f"| {rho:g} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def register_run_model(tracking_uri: str, run_id: str, name: str, alias: str, artifact: str = "model") -> str:
    """Register the model logged under ``artifact`` in run ``run_id`` as ``name`` and point ``alias`` at it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    version = mlflow.register_model(_logged_model_uri(client, run_id, artifact), name)
    client.set_registered_model_alias(name, alias, version.version)
    logger.info("MLflow: registered %s version %s (run %s) as %s@%s", name, version.version, run_id, name, alias)
    return str(version.version)


def _logged_model_uri(client: MlflowClient, run_id: str, artifact: str) -> str:
    """``models:/<id>`` of the model the run logged as ``artifact``, the one at the largest step where a resumed attempt
    logged it again. MLflow 3 keeps a logged model apart from the run's artifacts: ``runs:/<id>/model`` still
    registers it, after a warning on every call that the run has no artifacts there. ``runs:/`` for a model logged
    the MLflow 2 way (under the run's artifacts)."""
    run = client.get_run(run_id)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"name = '{artifact}' AND source_run_id = '{run_id}'")
    if not found:
        return f"runs:/{run_id}/{artifact}"
    steps = {o.model_id: o.step for o in (run.outputs.model_outputs if run.outputs else [])}
    return f"models:/{max(found, key=lambda m: (steps.get(m.model_id, -1), m.creation_timestamp)).model_id}"
