"""Print the Table A/B-style results of a run (TSN = stage 1, SoF-Net = stage 2) from MLflow, and the UI command.

    python jobs/results_table.py --config jobs/configs/demo.yaml [--eval runs/demo-eval/metrics.json]

With ``--eval``, the SoF-Net rows come from that ``jobs/evaluate.py`` report instead of the run's last epoch.
"""

import argparse
import json
import sys

from sofnet.config import load_config_or_exit
from sofnet.train.ray_job import run_name
from sofnet.train.report import results_table, stage_metrics
from sofnet.train.tracking import resolve_tracking_uri


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--eval", default="", help="metrics.json of jobs/evaluate.py for the SoF-Net rows")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config_or_exit(args.config, args.overrides)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    stages = stage_metrics(uri, cfg.mlflow.experiment, run_name(cfg))
    if "stage1" not in stages:
        sys.stderr.write(f"error: no stage-1 run of {run_name(cfg)!r} in {uri}\n")
        return 1
    primary = "top1" if cfg.data.dataset == "sports1m" else "mAP"
    arch = cfg.model.arch
    baseline = {"sofnet": "TSN", "sofnet_tsm": "TSM (causal)"}.get(arch, arch.upper())
    methods = [(baseline, stages["stage1"])]
    if "stage2" in stages or args.eval:
        sof = json.loads(open(args.eval).read())["metrics"] if args.eval else stages["stage2"]
        methods.append(("SoF-Net" if arch == "sofnet" else "SoF-Net^TSM", sof))
    print(results_table(methods, primary=primary))
    print(f"\nMLflow UI: {sys.executable.rsplit('/', 1)[0]}/mlflow ui --backend-store-uri {uri} --port 5000"
          "   (then open http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
