"""Data preparation: videos into WebDataset shards for sofnet.data (see data_prep/README.md).

Commands: ``python -m data_prep.activitynet``, ``python -m data_prep.sports1m``, ``python -m data_prep.synthetic``.
Modules: ``checks`` (input checks, :class:`~data_prep.checks.InputError`), ``labels`` (Entry, class lists,
ActivityNet JSON), ``lists`` (split / mmaction / Sports-1M lists, CSV), ``decode`` (PyAV frame sampling) with
``sampler`` (frames to JPEGs) and ``deadline`` (per-video decode timeout), ``shards`` (format, atomic writing,
resume state), ``reuse`` (one run per output folder), ``manifest`` (sizes.json, manifest.json, report.json,
the shard-set digest), ``runner`` (Ray driver), ``media`` (PyAV writer for synthetic and test videos), ``cli``.
"""
