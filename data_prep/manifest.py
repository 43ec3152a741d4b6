"""The files beside the shards: ``sizes.json``, ``manifest.json`` (what the shards were made with) and ``report.json``.

Usage::

    from data_prep.manifest import read_digest, shard_set_digest, verify_digest, write_outputs
    counts = write_outputs("shards/")        # after a run, from .state/ (the runner calls it)
    read_digest("shards/")                   # content digest of every shard, as manifest.json records it
    read_digest("shards/", "validation")     # of one subset's shards: what an evaluation read
    verify_digest("shards/", "validation")   # the same, recomputed from the tar files (raises if they changed)

``manifest.json`` (this module owns the format; ``sofnet.data.read_manifest`` reads it on the loader side)::

    format        2
    dataset       "activitynet" | "sports1m" | "csv"
    classes       class names in id order (label ids index this list)
    params        fps (a number or "native"), min_frames, short, short_side, quality, shard_size, seek_gap
    decoders      [{"pyav": "14.2.0", "ffmpeg": {"libavcodec": "61.19.100", ...}}, ...]: the distinct PyAV /
                  FFmpeg library versions of the tasks that wrote the shards (one entry unless workers differed)
    digest        SHA-256 of the shard set (all subsets), see shard_set_digest
    subsets       {subset: {
        videos       samples written
        annotated    videos the annotation lists for this subset
        present      of those, how many have a video file under --videos
        shards       shard file names, in order
        sha256       {shard name: SHA-256 of the tar file}
        digest       SHA-256 of this subset's shard set
        per_class    {class name: videos carrying that label}}}

Digest: the SHA-256 of the UTF-8 text made of one line ``"{shard name} {sha256 of the tar}\\n"`` per shard, lines
sorted by shard name. Equal digests mean byte-identical shard files under the same names, so a training or
evaluation run that logs the digest says exactly which data it read; the tars are deterministic, so rerunning the
same preparation on the same videos and decoder versions gives the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from data_prep.outdir import OutDir
from data_prep.shards import STATE, state_name

MANIFEST_FORMAT = 2


def shard_set_digest(shards: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of ``(shard name, sha256 of the tar)`` pairs, sorted by name (see the module docstring)."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(shards))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_digest(out_dir: str | Path, subset: str | None = None) -> str:
    """The digest ``manifest.json`` records for the whole shard set, or for one subset.

    Raises:
        FileNotFoundError: No ``manifest.json``.
        KeyError: A manifest without a digest (written before format 2) or without that subset.
    """
    text = OutDir(out_dir).read_text("manifest.json")
    if text is None:
        raise FileNotFoundError(f"{out_dir}: no manifest.json")
    manifest = json.loads(text)
    if subset is None:
        return manifest["digest"]
    return manifest["subsets"][subset]["digest"]


def verify_digest(out_dir: str | Path, subset: str | None = None) -> str:
    """Recompute the digest from the tar files the manifest lists; returns it if it matches the recorded one.

    Raises:
        ValueError: A shard's bytes differ from the manifest's SHA-256 (names the shard).
    """
    out = OutDir(out_dir)
    text = out.read_text("manifest.json")
    if text is None:
        raise FileNotFoundError(f"{out_dir}: no manifest.json")
    manifest = json.loads(text)
    wanted = [subset] if subset is not None else sorted(manifest["subsets"])
    pairs = []
    for name in wanted:
        for shard, recorded in manifest["subsets"][name]["sha256"].items():
            actual = out.sha256(shard)
            if actual != recorded:
                raise ValueError(f"{out.where(shard)}: sha256 {actual} differs from the manifest's {recorded}")
            pairs.append((shard, actual))
    digest = shard_set_digest(pairs)
    if digest != read_digest(out, subset):
        raise ValueError(f"{out}: digest of the shards differs from the manifest's")
    return digest


def _decoders(states: list[dict]) -> list[dict]:
    found: list[dict] = []
    for state in states:
        decoder = state.get("decoder")
        if decoder and decoder not in found:
            found.append(decoder)
    return found


def write_outputs(out_dir: str | Path) -> dict:
    """Write ``sizes.json``, ``manifest.json`` and ``report.json`` from the state of every finished shard.

    A reason in ``report.json`` reads ``category: details``; ``counts.skipped_by_reason`` counts the categories.
    Shards of subsets made by earlier runs into the same folder are included (the run parameters are the same:
    the runner refuses to mix them). A shard state without a SHA-256 (an older data_prep) is hashed here.

    Returns:
        The report's counts.
    """
    out = OutDir(out_dir)
    run = out.read_json(state_name("run")) or {}
    states = []
    for name in out.names(STATE, suffix=".tar.json"):
        state = out.read_json(f"{STATE}/{name}")
        if state is not None and out.exists(state["name"]):
            if "sha256" not in state:  # hashing every shard again at every run would cost a read of the data set
                state["sha256"] = out.sha256(state["name"])
            states.append(state)
    sizes = {state["name"]: len(state["written"]) for state in states}
    subsets: dict[str, dict] = {}
    skipped: list[dict] = []
    warnings: list[dict] = []

    def subset_entry(name: str) -> dict:
        return subsets.setdefault(name, {"videos": 0, "annotated": None, "present": None, "shards": [],
                                         "sha256": {}, "digest": None, "per_class": Counter()})

    for kind in ("skipped-", "failed-"):  # written by the runner for each subset it ran
        for name in out.names(STATE, prefix=kind, suffix=".json"):
            recorded = out.read_json(f"{STATE}/{name}") or {}
            skipped.extend(recorded.get("skipped", []))
            if "annotated" in recorded:
                entry = subset_entry(name[: -len(".json")].split("-", 1)[1])
                entry["annotated"], entry["present"] = recorded["annotated"], recorded["present"]
    for state in states:
        entry = subset_entry(state["subset"])
        entry["videos"] += len(state["written"])
        entry["shards"].append(state["name"])
        entry["sha256"][state["name"]] = state["sha256"]
        entry["per_class"].update(name for sample in state["written"] for name in sample["labels"])
        skipped.extend(state["skipped"])
        warnings.extend(state["warnings"])
    classes = run.get("classes", [])
    for entry in subsets.values():
        counts = entry["per_class"]
        entry["per_class"] = {name: counts[name] for name in classes if counts[name]}
        entry["digest"] = shard_set_digest(entry["sha256"].items())
    reasons = Counter(item["reason"].split(":")[0] for item in skipped)
    counts = {
        "written": sum(sizes.values()),
        "skipped": len(skipped),
        "warnings": len(warnings),
        "shards": len(sizes),
        "skipped_by_reason": dict(sorted(reasons.items())),
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": run.get("dataset"),
        "classes": classes,
        "params": run.get("params"),
        "decoders": _decoders(states),
        "digest": shard_set_digest((state["name"], state["sha256"]) for state in states),
        "subsets": dict(sorted(subsets.items())),
    }
    out.write_text("sizes.json", json.dumps(sizes, indent=1))
    out.write_text("manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    nodes: dict[str, dict] = {}  # which host wrote which shard and video (a cluster run spreads them)
    for state in states:
        node = nodes.setdefault(state.get("node", "unknown"), {"shards": [], "videos": []})
        node["shards"].append(state["name"])
        node["videos"] += [sample.get("id", sample["key"]) for sample in state["written"]]
    report = {"skipped": skipped, "warnings": warnings, "counts": counts, "nodes": dict(sorted(nodes.items()))}
    out.write_text("report.json", json.dumps(report, indent=1, ensure_ascii=False))
    return counts
