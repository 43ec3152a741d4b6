"""Evaluate a checkpoint or a registered model on shards with the real skipping path (ET overridable).

    python jobs/evaluate.py --config jobs/configs/anet_sofnet.yaml --model models:/sofnet-anet@best --out results/anet
    python jobs/evaluate.py --config jobs/configs/demo.yaml --checkpoint runs/demo --out results/demo --rho 0.99
    python jobs/evaluate.py ... --checkpoint runs/demo --which last   # the last epoch instead of the best one
    python jobs/evaluate.py ... --no-et            # only the columns without early termination
    python jobs/evaluate.py ... --et-cache results/demo/et_cache   # + the early-exit cache of jobs/tune_early_exit.py

A run directory gives its final stage's best epoch (``--which last``: its newest checkpoint). Writes
<out>/metrics.json, <out>/submission.json (official ActivityNet format) and <out>/submission_et.json.
Exit status: 0 done, 2 bad input (config, flags, checkpoint, shards, unreachable model registry): one line.
"""

import argparse
import logging
import os
import sys


def _load(args, cfg, model_overrides):
    from sofnet import checkpoint

    if args.model:
        import mlflow

        from sofnet.train.pyfunc import load_network
        from sofnet.train.tracking import TrackingError, check_tracking, resolve_tracking_uri

        uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
        try:
            check_tracking(uri, cfg.mlflow.experiment)  # bounded: no retries, a 10 s timeout for a server
        except TrackingError as e:
            raise checkpoint.CheckpointError(f"--model {args.model}: {e}") from None
        mlflow.set_tracking_uri(uri)
        try:
            model = load_network(args.model)
        except Exception as e:  # MlflowException: no such model/alias/version; the message names it
            raise checkpoint.CheckpointError(f"--model {args.model}: {str(e).splitlines()[0][:200]}") from None
        bad = checkpoint.conflicts(model.hparams(), model_overrides)
        if bad:
            raise checkpoint.CheckpointError(f"--model {args.model}: conflicts with the given "
                                             + ", ".join(f"model.{k}={model_overrides[k]!r}" for k in bad))
        return model, mlflow.models.get_model_info(args.model).run_id
    model, spec = checkpoint.load_network(args.checkpoint, which=args.which, expect=model_overrides)
    meta = spec["meta"]
    return model, meta.get("runs", {}).get(meta.get("stage", ""), "")


def _log(cfg, parent: str, report, args) -> None:
    """The evaluation as a child run of the run that trained the model (a store that cannot be reached: a warning)."""
    from pathlib import Path

    from sofnet.train.tracking import check_tracking, log_evaluation, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        check_tracking(uri, cfg.mlflow.experiment)
        source = args.checkpoint or args.model
        log_evaluation(uri, parent, f"evaluate {Path(source).name if args.checkpoint else source}", report,
                       sorted(Path(args.out).glob("*.json")))
    except Exception as e:  # noqa: BLE001  the results are on disk; MLflow holds a copy of them
        logging.getLogger("sofnet.jobs.evaluate").warning("results not logged to MLflow (%s): %s", uri,
                                                          str(e).splitlines()[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (data section: shards, batch size, workers)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run directory (its best epoch) or one checkpoint directory")
    src.add_argument("--model", help="MLflow model URI, e.g. models:/sofnet-anet@best")
    p.add_argument("--which", choices=["best", "last"], default="best", help="for a run directory: best or last epoch")
    p.add_argument("--out", required=True, help="output directory for metrics.json and the submission files")
    p.add_argument("--shards", default="", help="shards to evaluate (default: data.val_shards)")
    p.add_argument("--subset", default="", help="subset of a shard directory (default: data.val_subset)")
    p.add_argument("--rho", type=float, default=None, help="early-exit threshold (default: early_exit.rho)")
    p.add_argument("--t-min", type=int, default=None, help="early-exit minimum (default: early_exit.t_min)")
    p.add_argument("--mode", choices=["reached", "official"], default=None, help="T_min counting")
    p.add_argument("--no-et", action="store_true", help="skip the early-exit evaluation")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--et-cache", default="", metavar="DIR",
                   help="also write the early-exit cache (from the evaluation's pass without early exit) for a "
                        "rho/T_min sweep by replay: jobs/tune_early_exit.py ... cache=DIR")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the results to MLflow (default: a child run "
                   "of the evaluated model's training run)")
    from sofnet.session import run_command

    return run_command(p, argv, _evaluate)


def _evaluate(args, cfg) -> int:
    from omegaconf import OmegaConf

    from sofnet.early_exit import EarlyExit
    from sofnet.evaluation import evaluate_model
    from sofnet.preflight import PreflightError, check_shards

    # Model settings the user gave on the command line: a checkpoint must agree with them (never silently ignored).
    given = OmegaConf.to_container(OmegaConf.from_dotlist([o for o in args.overrides if o.startswith("model.")]))
    given = given.get("model", {})
    base = EarlyExit.from_config(cfg.early_exit)
    et = None if args.no_et else base.replace(rho=args.rho, t_min=args.t_min, mode=args.mode)
    for flag, path in (("--out", args.out), ("--et-cache", args.et_cache)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise PreflightError(f"{flag} {path}: exists and is not a directory")
    model, trained_in = _load(args, cfg, given)
    hp = model.hparams()
    if et is not None:
        et = et.check(num_segments=hp["num_segments"])
    if args.et_cache and not EarlyExit.applies_to(model):  # before the pass, not after it
        raise PreflightError(f"--et-cache {args.et_cache}: {args.checkpoint or args.model} cannot exit early (a "
                             "bidirectional TSM reads frames it would not compute), so it has no early-exit cache")
    check_shards(args.shards or cfg.data.val_shards, args.subset or cfg.data.val_subset,
                 key="--shards" if args.shards else "data.val_shards", num_classes=hp["num_classes"])
    report = evaluate_model(model, cfg, out_dir=args.out, et=et, shards=args.shards, subset=args.subset,
                            device=args.device, et_cache=args.et_cache, source=args.checkpoint or args.model)
    if trained_in and not args.no_mlflow:
        _log(cfg, trained_in, report, args)
    m = report["metrics"]
    for k in ("val/mAP", "val/top1", "val/gflops_per_video", "val/frame_usage", "val/et/mAP", "val/et/gflops_per_video",
              "val/et/frame_usage"):
        if k in m:
            print(f"{k:28s} {m[k]:.4f}")  # the command's result, on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
