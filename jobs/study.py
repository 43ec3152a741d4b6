"""Results that hold: train TSN and SoF-Net for several seeds, evaluate every row with the one evaluator, print the
Table A/B rows and the Table C grids as mean ± std over seeds, and whether the recipe meets its targets.

    python jobs/study.py --config jobs/configs/study.yaml                  # seeds 1 2 3 of the benchmark task
    python jobs/study.py --config jobs/configs/study.yaml --seeds 5     # seeds 1-5: 4 and 5 beside the three trained
    python jobs/study.py --config jobs/configs/study.yaml seeds=[7,11] name=two-others
    python jobs/study.py --config jobs/configs/study.yaml "overrides=[model.gate_init=official]" name=official-init
    python jobs/study.py --config jobs/configs/study.yaml name=beta-0.8 stage1_from=bench-study-v5 \
        "overrides=[loss.beta=0.8]"       # stage 2 only, from bench-study-v5's stage 1 of each seed (its TSN rows)
    python jobs/study.py --config jobs/configs/study.yaml name=bench-study-v4 \
        "overrides=[model.video_score=passed_mean]"                   # v4: the official video score
    python jobs/study.py --config jobs/configs/study.yaml name=bench-study-v5-heldout runs_from=bench-study-v5 \
        "overrides=[data.val_shards=data/bench-heldout/shards]"       # its runs scored on other videos, no training

The seeds' jobs train side by side where the Ray cluster's CPUs hold several whole (max_concurrent=N caps it).
Resumable: rerun the same command and finished seeds are neither retrained nor re-evaluated. Writes
<output_dir>/<name>/study_table.md and study.json; MLflow: a parent run with a child per (method, seed).
Exit status: 0 done (targets met or not: the table says which), 1 a training failed, 2 bad input (one line).
"""

import argparse
import logging
import sys

logger = logging.getLogger("sofnet.jobs.study")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="study YAML (jobs/configs/study.yaml)")
    p.add_argument("--seeds", type=_count, default=0, metavar="N",
                   help="N seeds: the study file's first N, continued past its last (seeds=[...] names them)")
    p.add_argument("--verbose", action="store_true", help="every library's log lines")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the study file (OmegaConf dotlist)")
    args = p.parse_args(argv)
    from sofnet.config import ConfigError
    from sofnet.session import one_line_errors

    return one_line_errors(lambda: _run(args), errors=(ConfigError,))


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def _run(args) -> int:
    from sofnet.config import ConfigError
    from sofnet.console import setup
    from sofnet.session import one_line_errors
    from sofnet.study import load_study

    study = load_study(args.config, args.overrides, args.seeds)  # a bad file: one line before torch, MLflow load
    setup(verbose=args.verbose)  # imports MLflow to quiet it
    from sofnet.train.tracking import TrackingError

    return one_line_errors(lambda: _run_study(study), errors=(ConfigError, TrackingError))


def _run_study(study) -> int:
    from sofnet.preflight import check_data
    from sofnet.study import run_study, seed_config
    from sofnet.train.tracking import check_tracking, resolve_tracking_uri, ui_hint

    cfg = seed_config(study, study.seeds[0])
    check_data(cfg)  # shards present, of the right class count: before any Ray or training starts
    check_tracking(resolve_tracking_uri(study.mlflow.tracking_uri or cfg.mlflow.tracking_uri), study.mlflow.experiment)
    try:
        outcome = run_study(study)
    except RuntimeError as e:
        logger.error("%s", e)
        return 1
    print(outcome["table"])
    print(f"\nstudy {study.name}: {outcome['seconds'] / 60:.1f} min; MLflow parent run {outcome['run_id']}")
    print(ui_hint(resolve_tracking_uri(study.mlflow.tracking_uri or cfg.mlflow.tracking_uri)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
