"""Train SoF-Net on ActivityNet: stage 1 (backbone as TSN/TSM) then stage 2 (SoF-Net), on Ray Train + DeepSpeed.

    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- env SOFNET_GIT_COMMIT=$(git rev-parse HEAD) \
        python jobs/train_anet.py --config jobs/configs/anet_sofnet.yaml scaling.num_workers=8 scaling.use_gpu=true

The ``env SOFNET_GIT_COMMIT=...`` prefix (expanded by your shell) gives the MLflow runs their ``git_commit`` tag;
the uploaded working directory is not a git checkout.
    python jobs/train_anet.py --config jobs/configs/demo.yaml --smoke-test     # laptop check, local Ray
"""

import sys

from sofnet.train.cli import main

if __name__ == "__main__":
    sys.exit(main("activitynet"))
