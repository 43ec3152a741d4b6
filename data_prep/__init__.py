"""Data preparation: videos into WebDataset shards for sofnet.data (see data_prep/README.md).

Commands: ``python -m data_prep.activitynet``, ``python -m data_prep.sports1m``, ``python -m data_prep.synthetic``.
Modules: ``decode`` (PyAV frame sampling), ``labels`` (annotation formats), ``shards`` (format, atomic writing,
resume state), ``runner`` (Ray driver), ``media`` (PyAV writer for synthetic and test videos), ``cli``.
"""
