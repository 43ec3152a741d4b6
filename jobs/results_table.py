"""Evaluate a run's best checkpoints (baseline = stage 1, SoF-Net = stage 2) and print the Table A/B-style results.

    python jobs/results_table.py --config jobs/configs/demo.yaml [--run runs/demo] [--out runs/demo-eval]

Every row comes from the one evaluator (``sofnet.evaluation``) on the same validation videos, from the checkpoints of
one named run (``<train.output_dir>/<name>`` unless ``--run``). Each evaluation is logged to MLflow as a child of its
stage's run, and the table (``results_table.md``) on the job's run, so the console and the UI agree.
Exit status: 0 done, 2 bad input (config, run directory, shards): one line.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("sofnet.jobs.results_table")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--run", default="", help="run directory (default: <train.output_dir>/<name> of the config)")
    p.add_argument("--out", default="", help="where each stage's metrics.json goes (default: <run>-eval, or "
                   "./<name>-eval for a run in an object store)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the evaluations and the table to MLflow")
    p.add_argument("--verbose", action="store_true", help="every library's log lines")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from sofnet.session import cli_config, one_line_errors

    cfg = cli_config(args.config, args.overrides, verbose=args.verbose)
    return one_line_errors(lambda: _table(args, cfg))


def _table(args, cfg) -> int:
    from sofnet import storage
    from sofnet.preflight import check_shards
    from sofnet.shards import subset_digest
    from sofnet.train.report import evaluate_run, results_table
    from sofnet.train.worker import run_dir

    run = args.run or run_dir(cfg)  # local, or an object-store URI (s3://...): then <name>-eval here
    name = os.fspath(run).rstrip("/").rsplit("/", 1)[-1]
    out = Path(args.out) if args.out else (Path(run).with_name(name + "-eval") if not storage.is_remote(run)
                                           else Path(name + "-eval"))
    check_shards(cfg.data.val_shards, cfg.data.val_subset, key="data.val_shards", num_classes=cfg.model.num_classes)
    rows = evaluate_run(cfg, run, out, device=args.device)
    primary = "top1" if cfg.data.dataset == "sports1m" else "mAP"
    table = results_table([(name, r["metrics"]) for name, r in rows], primary=primary)
    digest = subset_digest(cfg.data.val_shards, cfg.data.val_subset)[:12]
    videos = int(rows[0][1]["metrics"]["val/videos"])
    header = (f"{name}: best epoch of each stage, {videos} {cfg.data.val_subset} videos of {cfg.data.val_shards}"
              f" (shard digest {digest or 'unknown'}), early exit rho={cfg.early_exit.rho} t_min={cfg.early_exit.t_min}"
              f" ({cfg.early_exit.mode})")
    text = f"{header}\n\n{table}\n"
    (out / "results_table.md").write_text(text)
    print(text)
    if not args.no_mlflow:
        _log(cfg, rows, text, out)
    from sofnet.train.tracking import resolve_tracking_uri, ui_hint

    print(ui_hint(resolve_tracking_uri(cfg.mlflow.tracking_uri)))
    return 0


def _log(cfg, rows, text: str, out: Path) -> None:
    """Each evaluation as a child of its stage's run, the table on the job's run."""
    from mlflow.tracking import MlflowClient

    from sofnet.train.tracking import TrackingError, check_tracking, log_evaluation, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        check_tracking(uri, cfg.mlflow.experiment)
    except TrackingError as e:
        logger.warning("not logged to MLflow: %s", e)
        return
    for name, report in rows:
        stage_run = report["runs"].get(report["stage"])
        if stage_run:
            files = sorted((out / report["stage"]).glob("*.json"))
            log_evaluation(uri, stage_run, f"evaluate {name} (best epoch)", report, files)
    job = rows[-1][1]["runs"].get("job")
    if job:
        MlflowClient(tracking_uri=uri).log_text(job, text, "results_table.md")


if __name__ == "__main__":
    sys.exit(main())
