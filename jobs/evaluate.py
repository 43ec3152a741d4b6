"""Evaluate a checkpoint or a registered model on shards with the real skipping path (ET overridable).

    python jobs/evaluate.py --config jobs/configs/anet_sofnet.yaml --model models:/sofnet-anet@best --out results/anet
    python jobs/evaluate.py --config jobs/configs/demo.yaml --checkpoint runs/demo --out results/demo --rho 0.99
    python jobs/evaluate.py ... --no-et            # only the columns without early termination
    python jobs/evaluate.py ... --et-cache results/demo/et_cache   # + the early-exit cache of jobs/tune_early_exit.py

Writes <out>/metrics.json, <out>/submission.json (official ActivityNet format) and <out>/submission_et.json.
"""

import argparse
import logging
import sys

from sofnet.config import load_config_or_exit
from sofnet.train.evaluation import evaluate_model, load_trained


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (data section: shards, batch size, workers)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run directory (latest checkpoint) or one checkpoint-* directory")
    src.add_argument("--model", help="MLflow model URI, e.g. models:/sofnet-anet@best")
    p.add_argument("--out", required=True, help="output directory for metrics.json and the submission files")
    p.add_argument("--shards", default="", help="shards to evaluate (default: data.val_shards)")
    p.add_argument("--subset", default="", help="subset of a shard directory (default: data.val_subset)")
    p.add_argument("--rho", type=float, default=None, help="early-exit threshold (default: early_exit.rho)")
    p.add_argument("--t-min", type=int, default=None, help="early-exit minimum (default: early_exit.t_min)")
    p.add_argument("--mode", choices=["reached", "official"], default=None, help="T_min counting")
    p.add_argument("--no-et", action="store_true", help="skip the early-exit evaluation")
    p.add_argument("--et-cache", default="", metavar="DIR",
                   help="also write the early-exit cache (one more pass without early exit) for a rho/T_min sweep by "
                        "replay: jobs/tune_early_exit.py ... cache=DIR")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config_or_exit(args.config, args.overrides)
    if args.model:
        import mlflow

        from sofnet.train.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    model, _ = load_trained(checkpoint=args.checkpoint or "", model_uri=args.model or "")
    e = cfg.early_exit
    et = None if args.no_et else (args.rho if args.rho is not None else e.rho,
                                  args.t_min if args.t_min is not None else e.t_min, args.mode or e.mode)
    report = evaluate_model(model, cfg, out_dir=args.out, et=et, shards=args.shards, subset=args.subset)
    if args.et_cache:
        from sofnet.tune.et_cache import write_cache

        write_cache(model, cfg, args.et_cache, shards=args.shards, subset=args.subset,
                    source=args.checkpoint or args.model)
    m = report["metrics"]
    for k in ("val/mAP", "val/top1", "val/gflops_per_video", "val/frame_usage", "val/et/mAP", "val/et/gflops_per_video",
              "val/et/frame_usage"):
        if k in m:
            print(f"{k:28s} {m[k]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
