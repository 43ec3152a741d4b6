"""Ray Tune sweeps over SoF-Net, compared in MLflow.

- :mod:`sofnet.tune.sweep`: the sweep YAML (search space, algorithm, scheduler, metric, concurrency).
- :mod:`sofnet.tune.alpha_beta`: Table D, each trial a Ray Train + DeepSpeed training run.
- :mod:`sofnet.tune.et_cache` and :mod:`sofnet.tune.early_exit`: Table C, early exit replayed from a cache.
- :mod:`sofnet.tune.report`: MLflow parent/child runs, the tables, the accuracy-vs-GFLOPs Pareto figure.
"""
