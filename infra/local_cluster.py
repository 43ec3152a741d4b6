"""A Ray cluster of separate hosts on this one machine: a head and worker nodes, each in its own network namespace.

Usage (as root, Linux with ``ip``)::

    python infra/local_cluster.py up          # bridge 198.51.100.1/24, head 198.51.100.10, workers .11 .12 .13
    python infra/local_cluster.py status      # namespaces, node processes, the nodes Ray sees
    python infra/local_cluster.py kill w2     # SIGKILL every process of node w2 (a host lost)
    python infra/local_cluster.py restart     # every node's Ray started again (a lost head brought back)
    python infra/local_cluster.py down        # every process, namespace, veth and the bridge it made

    from local_cluster import up, down       # the same from a test fixture (sys.path += infra/)

Each node is a network namespace ``sofnet-<node>`` with a veth pair (``sfn-<node>`` on the bridge ``sofnet-br0``,
``eth0`` inside) and loopback, and runs ``ray start --block`` there with its own ``--temp-dir``,
``--node-ip-address``, ``--num-cpus`` and a resource naming it (``node_w1``). Only 198.51.100.0/24 (TEST-NET-2)
and loopback: no NAT, no default route in the namespaces, nothing else of the host is touched. The dashboard
and job server listen on 198.51.100.10:8265 inside the head's namespace; the host reaches them over the bridge.
``GLOO_SOCKET_IFNAME=eth0`` on every node: gloo would otherwise pick its address from the hostname, which is
the host's (namespaces share it), not the node's.

The state (names, process ids) is written to ``--state-dir`` before anything is made, so ``down`` cleans up
after a crash, and ``up`` first runs ``down`` so a second ``up`` after a failed one starts clean. Processes are
ended by process group, then by namespace (``ip netns pids``), never by name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

logger = logging.getLogger("local_cluster")

NET = "198.51.100"  # TEST-NET-2 (RFC 5737): never routed, so nothing here can reach another network
HOST_IP = f"{NET}.1"
BRIDGE = "sofnet-br0"
HEAD_IP = f"{NET}.10"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
DASHBOARD = f"http://{HEAD_IP}:{DASHBOARD_PORT}"
NS_IFNAME = "eth0"  # the node's interface inside its namespace (names are per namespace)
DEFAULT_STATE_DIR = Path("/tmp/sofnet-cluster")  # short: Ray's socket paths live under it (108-byte limit)
REPO = Path(__file__).resolve().parents[1]
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # four nodes share this machine's /dev/shm


class ClusterError(RuntimeError):
    """The cluster could not be made or did not come up; one line that says why."""


@dataclass
class Node:
    """One host of the cluster: its namespace, veth, IP, CPUs and the ``ray start`` process running there."""

    name: str
    ip: str
    cpus: int
    head: bool = False
    pid: int = 0

    @property
    def netns(self) -> str:
        return f"sofnet-{self.name}"

    @property
    def veth(self) -> str:
        return f"sfn-{self.name}"  # host side, on the bridge (<= 15 characters)

    @property
    def resource(self) -> str:
        return f"node_{self.name}"


def plan(workers: int = 3, cpus: Optional[List[int]] = None) -> List[Node]:
    """The head (0 CPUs: it runs the job drivers, never a training rank) and ``workers`` worker nodes.

    ``cpus``: CPUs per worker (default 1 each). A worker with 2 lets two ranks share one node (STRICT_PACK).
    """
    cpus = cpus or [1] * workers
    if len(cpus) != workers or not 1 <= workers <= 8:
        raise ClusterError(f"need 1..8 workers and one CPU count per worker (got {workers} and {cpus})")
    return [Node("head", HEAD_IP, 0, head=True)] + [Node(f"w{i + 1}", f"{NET}.{11 + i}", c) for i, c in enumerate(cpus)]


def why_unsupported() -> Optional[str]:
    """None if namespaces can be made here, else one line why (not root, no ``ip``, no netns)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = "sofnet-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, netns: str = "", check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")
    return done


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _save(state_dir: Path, nodes: List[Node]) -> None:
    tmp = _state_file(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps({"bridge": BRIDGE, "nodes": [asdict(n) for n in nodes]}, indent=1))
    tmp.replace(_state_file(state_dir))


def load(state_dir: Path | str = DEFAULT_STATE_DIR) -> List[Node]:
    """The nodes of the cluster recorded in ``state_dir`` (empty if none)."""
    f = _state_file(Path(state_dir))
    if not f.is_file():
        return []
    try:
        return [Node(**n) for n in json.loads(f.read_text())["nodes"]]
    except (ValueError, KeyError, TypeError):
        logger.warning("unreadable state %s: cleaning up by the default names", f)
        return []


def node_env(node: Node) -> Dict[str, str]:
    """The environment of a node's ``ray start`` (and so of every Ray process on it)."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)  # no proxy: there is nothing to reach beyond 198.51.100.0/24
    env.update(RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu", GLOO_SOCKET_IFNAME=NS_IFNAME,
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               RAY_USAGE_STATS_ENABLED="0", NO_PROXY=f"{NET}.0/24,localhost,127.0.0.1")
    return env


def _network(nodes: List[Node]) -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for n in nodes:
        _ip("netns", "add", n.netns)
        _ip("link", "add", n.veth, "type", "veth", "peer", "name", NS_IFNAME, "netns", n.netns)
        _ip("link", "set", n.veth, "master", BRIDGE)
        _ip("link", "set", n.veth, "up")
        _ip("addr", "add", f"{n.ip}/24", "dev", NS_IFNAME, netns=n.netns)
        _ip("link", "set", NS_IFNAME, "up", netns=n.netns)
        _ip("link", "set", "lo", "up", netns=n.netns)


def _ray_start(node: Node, state_dir: Path) -> int:
    ray = str(Path(sys.executable).parent / "ray")
    args = [ray, "start", "--block", "--node-ip-address", node.ip, "--num-cpus", str(node.cpus),
            "--resources", json.dumps({node.resource: 1}), "--temp-dir", str(state_dir / node.name),
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
    if node.head:
        args += ["--head", "--port", str(GCS_PORT), "--include-dashboard", "true", "--dashboard-host", node.ip,
                 "--dashboard-port", str(DASHBOARD_PORT)]
    else:
        args += ["--address", f"{HEAD_IP}:{GCS_PORT}"]
    log = open(state_dir / f"{node.name}.log", "w")
    try:  # its own session: the process group is the node's `ray start` and every Ray process it starts
        proc = subprocess.Popen(["ip", "netns", "exec", node.netns, *args], env=node_env(node), cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()
    return proc.pid


def _get(path: str, timeout: float = 5) -> Optional[dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight over the bridge
    try:
        with opener.open(f"{DASHBOARD}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def alive_nodes() -> Dict[str, str]:
    """{node IP: state} of every node the head's state API lists (ALIVE / DEAD); {} while it is unreachable."""
    answer = _get("/api/v0/nodes?limit=100")
    rows = ((answer or {}).get("data") or {}).get("result", {}).get("result", []) if answer else []
    return {r["node_ip"]: r["state"] for r in rows if isinstance(r, dict) and "node_ip" in r}


def _pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_alive(nodes: List[Node], timeout: float = 240, state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Until the head lists every node ALIVE (bounded by ``timeout``); raises :class:`ClusterError` with the log tail
    of a node whose ``ray start`` has exited."""
    want = {n.ip for n in nodes}
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout) + 1):  # bounded in count as in time
        seen = alive_nodes()
        if {ip for ip, s in seen.items() if s == "ALIVE"} >= want:
            return
        for n in nodes:
            if not _pid_alive(n.pid):
                raise ClusterError(f"`ray start` of {n.name} exited: {_tail(n, state_dir)}")
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    raise ClusterError(f"not every node came up in {timeout:.0f} s: the head sees {seen or 'nothing'}")


def _tail(node: Node, state_dir: Path = DEFAULT_STATE_DIR, chars: int = 1500) -> str:
    f = state_dir / f"{node.name}.log"
    return f.read_text(errors="replace")[-chars:] if f.is_file() else "(no log)"


def up(state_dir: Path | str = DEFAULT_STATE_DIR, workers: int = 3, cpus: Optional[List[int]] = None,
       timeout: float = 240) -> List[Node]:
    """Make the network, start the head then the workers, and wait until the head lists every node ALIVE.

    Whatever an earlier run left behind (same state dir, same names) is removed first. On failure everything made
    so far is removed again before :class:`ClusterError` is raised.
    """
    state_dir = Path(state_dir)
    reason = why_unsupported()
    if reason:
        raise ClusterError(reason)
    down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    nodes = plan(workers, cpus)
    for n in plan(8):  # the previous run's Ray sessions (logs, spilled objects) would pile up run after run
        shutil.rmtree(state_dir / n.name, ignore_errors=True)
    _save(state_dir, nodes)  # before anything is made: `down` finds it after a crash
    try:
        _network(nodes)
        for n in nodes:
            n.pid = _ray_start(n, state_dir)
            _save(state_dir, nodes)
            if n.head:  # workers register with a running GCS
                wait_alive([n], timeout, state_dir)
        wait_alive(nodes, timeout, state_dir)
    except BaseException:
        logs = "; ".join(f"{n.name}: {_tail(n, state_dir, 400)!r}" for n in nodes if n.pid)
        down(state_dir)
        if logs:
            logger.error("cluster did not come up; node logs: %s", logs)
        raise
    logger.info("cluster up: head %s (dashboard %s), workers %s", HEAD_IP, DASHBOARD,
                ", ".join(f"{n.name}={n.ip}" for n in nodes if not n.head))
    return nodes


def netns_pids(netns: str) -> List[int]:
    """Every process in network namespace ``netns`` (``ip netns pids``)."""
    done = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()] if done.returncode == 0 else []


def kill_node(name: str, state_dir: Path | str = DEFAULT_STATE_DIR, sig: int = signal.SIGKILL) -> List[int]:
    """Send ``sig`` to every process in the node's namespace (SIGKILL: the host is lost); returns their pids."""
    nodes = {n.name: n for n in load(state_dir)}
    if name not in nodes:
        raise ClusterError(f"no node {name!r} in {state_dir} (nodes: {', '.join(nodes) or 'none'})")
    pids = netns_pids(nodes[name].netns)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    for _ in range(50):  # bounded: SIGKILLed processes vanish within moments
        if not _pid_alive(nodes[name].pid):
            break
        time.sleep(0.1)
    return pids


def node_of_pid(pid: int) -> str:
    """The network namespace of process ``pid`` (``ip netns identify``), "" if none of ours."""
    done = _ip("netns", "identify", str(pid), check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _stop_processes(nodes: List[Node], grace: float = 15) -> None:
    """End every node's processes: its `ray start` process group (SIGTERM, then SIGKILL), then whatever is left in
    its namespace (SIGKILL, bounded)."""
    for n in nodes:
        if n.pid:
            try:
                os.killpg(n.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace
    for _ in range(int(grace * 10) + 1):
        if time.monotonic() > deadline or not any(netns_pids(n.netns) for n in nodes):
            break
        time.sleep(0.1)
    for n in nodes:
        for attempt in range(20):  # bounded: SIGKILL cannot be ignored, but a process may be in D state a moment
            pids = netns_pids(n.netns)
            if n.pid:
                try:
                    os.killpg(n.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        else:
            logger.error("processes still in %s after SIGKILL: %s", n.netns, netns_pids(n.netns))
        if n.pid:
            _pid_alive(n.pid)  # reaps our child, if it was one


def down(state_dir: Path | str = DEFAULT_STATE_DIR, grace: float = 15) -> None:
    """End every node's processes (process group, SIGTERM then SIGKILL; then whatever is left in the namespace),
    delete the namespaces (their veths go with them) and the bridge. Safe to run twice or after a crash."""
    state_dir = Path(state_dir)
    nodes = load(state_dir) or plan(8)  # no state: clean up by the names this script makes
    _stop_processes(nodes, grace)
    for n in nodes:
        if _ip("netns", "pids", n.netns, check=False).returncode == 0:
            _ip("netns", "del", n.netns, check=False)
        if _ip("link", "show", n.veth, check=False).returncode == 0:  # gone with the namespace, unless half-made
            _ip("link", "del", n.veth, check=False)
    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        _ip("link", "del", BRIDGE, check=False)
    _state_file(state_dir).unlink(missing_ok=True)


def restart(state_dir: Path | str = DEFAULT_STATE_DIR, timeout: float = 240, grace: float = 15) -> List[Node]:
    """Bring a lost head back: stop every node's Ray and start them again on the same network, head first.

    Ray's GCS keeps the cluster's state in memory (no Redis fault tolerance here), so a restarted head is a new
    cluster that the old worker nodes cannot rejoin: they are restarted too. Jobs and their logs are gone with the
    old head; what a job keeps in its storage (checkpoints in a bucket) is not, and a resubmitted job resumes there.
    ``grace``: seconds the old nodes get to stop on SIGTERM before SIGKILL (as in :func:`down`).
    """
    state_dir = Path(state_dir)
    nodes = load(state_dir)
    if not nodes:
        raise ClusterError(f"no cluster in {state_dir} (run `up` first)")
    _stop_processes(nodes, grace)
    for n in sorted(nodes, key=lambda n: not n.head):
        n.pid = _ray_start(n, state_dir)
        _save(state_dir, nodes)
        if n.head:
            wait_alive([n], timeout, state_dir)
    wait_alive(nodes, timeout, state_dir)
    logger.info("cluster restarted: head %s, workers %s", HEAD_IP, ", ".join(n.ip for n in nodes if not n.head))
    return nodes


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> Dict[str, dict]:
    """Per node: its namespace exists, its ``ray start`` runs, how many processes it has, what the head says."""
    seen = alive_nodes()
    out = {}
    for n in load(state_dir):
        exists = _ip("netns", "pids", n.netns, check=False).returncode == 0
        out[n.name] = {"ip": n.ip, "netns": n.netns if exists else None, "cpus": n.cpus,
                       "ray_start_running": bool(n.pid) and _pid_alive(n.pid),
                       "processes": len(netns_pids(n.netns)) if exists else 0, "ray": seen.get(n.ip, "unknown")}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down", "restart", "status", "kill"])
    p.add_argument("node", nargs="?", help="kill: the node (w1, w2, ...)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--cpus", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="CPUs per worker node, comma-separated (default 1 each)")
    p.add_argument("--timeout", type=float, default=240, help="seconds for every node to come up")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if a.command == "up":
            up(a.state_dir, a.workers, a.cpus, a.timeout)
            print(f"Ray dashboard and job server: {DASHBOARD}")  # noqa: T201 (the command's answer)
        elif a.command == "down":
            down(a.state_dir)
        elif a.command == "restart":
            restart(a.state_dir, a.timeout)
        elif a.command == "kill":
            if not a.node:
                p.error("kill needs a node name")
            logger.info("killed %d processes of %s", len(kill_node(a.node, a.state_dir)), a.node)
        else:
            print(json.dumps(status(a.state_dir), indent=1))  # noqa: T201
    except ClusterError as e:
        logger.error("local_cluster %s: %s", a.command, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
