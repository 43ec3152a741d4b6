"""ray_cluster.yaml is a valid Ray autoscaler config (Ray's own JSON schema) for a GPU cluster that installs us, and
its doors are closed: token auth on every Ray node, the job API and MLflow on no public interface."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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


# A listening address on every interface: 0.0.0.0, ::, [::] (as a flag value or a host:port); not reST's "Usage::".
ANY_INTERFACE = re.compile(r"(?<![\w.)\]:`])(0\.0\.0\.0(?![\w.])|\[::\]|::(?![\w.:]))")


def _doors() -> dict:
    """The files that start servers on a cluster: the autoscaler config and everything under infra/."""
    files = [REPO / "ray_cluster.yaml", *sorted(p for p in (REPO / "infra").iterdir() if p.is_file())]
    return {p.name: p.read_text() for p in files}


def test_no_server_listens_on_every_interface() -> None:
    """No command in the cluster config or infra/ binds 0.0.0.0 or ::: the job API runs any command it is sent and
    MLflow here has no authentication, so each listens on loopback or the head's private address."""
    for name, text in _doors().items():
        for i, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#") or not ANY_INTERFACE.search(line):
                continue
            # infra/mlflow_server.sh names those addresses only to refuse them (exit 2)
            assert name == "mlflow_server.sh" and ("case" in line or line.strip().startswith(("0.0.0.0|", "echo"))), \
                f"{name}:{i} binds every interface: {line.strip()}"
    assert ANY_INTERFACE.search("ray start --dashboard-host=0.0.0.0") and ANY_INTERFACE.search("--host ::")
    assert not ANY_INTERFACE.search("--host 10.0.0.5 --port 5000") and not ANY_INTERFACE.search("Usage (as root)::")
    assert ANY_INTERFACE.search("--address 0.0.0.0:8265") and ANY_INTERFACE.search("host=[::]:5000")


def test_every_ray_node_requires_the_token_and_the_dashboard_stays_on_loopback() -> None:
    cfg = _config()
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command.split("ray start")[0], command
    head = next(c for c in starts if "--head" in c)
    host = re.search(r"--dashboard-host[= ](\S+)", head)
    assert host is None or host.group(1) in ("127.0.0.1", "localhost"), head
    assert any(Path(dst).name == "auth_token" for dst in cfg["file_mounts"])  # every node holds the token


def _mlflow_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """infra/mlflow_server.sh with `echo` standing in for mlflow: the command it would exec, nothing started."""
    return subprocess.run([str(REPO / "infra" / "mlflow_server.sh"), "--dir", str(tmp_path / "store"), *args],
                          env={**os.environ, "MLFLOW_BIN": shutil.which("echo")}, capture_output=True, text=True,
                          timeout=30)


def test_mlflow_server_binds_loopback_or_a_given_address_with_allowed_hosts(tmp_path: Path) -> None:
    laptop = _mlflow_command(tmp_path).stdout.split()
    assert laptop[laptop.index("--host") + 1] == "127.0.0.1"
    assert laptop[laptop.index("--allowed-hosts") + 1] == "127.0.0.1:5000,localhost:*,127.0.0.1:*"
    head = _mlflow_command(tmp_path, "--host", "10.0.3.7", "--port", "5001").stdout.split()
    assert head[head.index("--host") + 1] == "10.0.3.7"
    assert head[head.index("--allowed-hosts") + 1].split(",")[0] == "10.0.3.7:5001"
    for everywhere in ("0.0.0.0", "::", "[::]"):
        refused = _mlflow_command(tmp_path, "--host", everywhere)
        assert refused.returncode == 2 and "no authentication" in refused.stderr and not refused.stdout, everywhere
    setup = "\n".join(_config()["head_setup_commands"])
    assert "mlflow_server.sh --host" in setup  # the head's server is reachable by the workers' jobs
