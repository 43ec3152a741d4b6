"""ray_cluster.yaml is a valid Ray autoscaler config (Ray's own JSON schema) for a GPU cluster that installs us."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_config_validates_against_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)  # raises ValidationError naming the bad key


def test_cluster_has_cpu_head_and_gpu_workers_and_installs_the_project() -> None:
    cfg = _config()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) > 0]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "sofnet" in setup  # the project with its pinned dependencies
    assert any(remote == "." for remote in cfg["file_mounts"].values())


def test_schema_rejects_a_broken_config() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    bad = _config()
    bad["available_node_types"]["head"]["min_workers"] = "zero"
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted min_workers: 'zero'")
