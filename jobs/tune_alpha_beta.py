"""Table D: sweep the loss weights alpha and beta with Ray Tune, each trial a Ray Train + DeepSpeed training run.

    python jobs/tune_alpha_beta.py --sweep jobs/configs/tune/alpha_beta.yaml
    python jobs/tune_alpha_beta.py --sweep jobs/configs/tune/alpha_beta.yaml --smoke-test      # CI size, synthetic
    python jobs/tune_alpha_beta.py --sweep jobs/configs/tune/alpha_beta.yaml --resume          # after an interruption

One MLflow parent run per sweep, each trial's training run its child; Table D, the accuracy-vs-GFLOPs Pareto
figure and the best trial's model (registered under mlflow.registered_model@alias) at the end.
"""

import sys

from sofnet.tune.cli import main

if __name__ == "__main__":
    sys.exit(main("alpha_beta"))
