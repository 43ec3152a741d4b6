"""Table C: sweep early exit's rho x T_min by replaying a cached skipping-path pass, as Ray Tune trials in MLflow.

    python jobs/tune_early_exit.py --sweep jobs/configs/tune/early_exit.yaml checkpoint=runs/demo
    python jobs/tune_early_exit.py --sweep jobs/configs/tune/early_exit.yaml cache=results/demo/et_cache
    python jobs/tune_early_exit.py --sweep jobs/configs/tune/early_exit.yaml --smoke-test checkpoint=...

The cache is written from `checkpoint` (run dir, checkpoint dir or models:/name@alias) on the base config's
validation shards when `cache` has none (or by `jobs/evaluate.py --et-cache DIR`).
"""

import sys

from sofnet.tune.cli import main

if __name__ == "__main__":
    sys.exit(main("early_exit"))
