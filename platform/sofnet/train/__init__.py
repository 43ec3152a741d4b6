"""Distributed training of SoF-Net: Ray Train + DeepSpeed, tracked in MLflow.

Modules (Ray and MLflow are imported only here, never by the model code):

* :mod:`sofnet.train.ray_job` -- ``run_training(cfg)``: the driver (TorchTrainer, scaling, checkpoints, retries).
* :mod:`sofnet.train.worker` -- the per-worker function: both stages, DeepSpeed engines, checkpoint/resume.
* :mod:`sofnet.train.loop` -- ``train_one_epoch`` and ``evaluate`` (skipping path, with and without early exit).
* :mod:`sofnet.train.deepspeed_config` -- the DeepSpeed config and learning-rate groups, from our config.
* :mod:`sofnet.train.tracking` -- MLflow: URI check, runs, metrics, artifacts, registry alias.
* :mod:`sofnet.train.pyfunc` -- the MLflow pyfunc model (config + state dict, no pickled module).
"""
