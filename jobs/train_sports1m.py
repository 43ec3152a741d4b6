"""Train SoF-Net on Sports-1M (two stages, Ray Train + DeepSpeed); metrics are top-1/top-5.

    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/train_sports1m.py --config jobs/configs/sports1m_sofnet.yaml
"""

import sys

from sofnet.train.cli import main

if __name__ == "__main__":
    sys.exit(main("sports1m"))
