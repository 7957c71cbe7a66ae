"""A simulation attached to a two-node Ray cluster runs client work on both nodes.

The cluster is started the way docs/deploy.md tells users to (``ray start --head`` and
``ray start --address=...``), here on loopback with one CPU per node, its own ports and its own
temporary directory. ``fedcascade run --set simulation.ray_address=...`` attaches to it; every
round records which Ray node ran each community (``rounds.jsonl`` ``workers``), and both nodes
must appear there.

The cluster is stopped by process group and by an environment token, never with
``ray stop``: that command stops every Ray instance on the machine, other users' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.deploy_support import (
    REPO,
    TINY_EXPERIMENT,
    TOKEN_ENV,
    free_port,
    kill_by_token,
    pids_with_token,
    port_open,
    wait_until,
)

# Ask the cluster for its live nodes (a short-lived driver).
NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while True:
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2 or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(nodes))
"""


def _ray_start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ray", "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _node_ports() -> list[str]:
    """Explicit free ports, so nothing collides with another Ray on this machine."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--worker-port-list={','.join(str(free_port()) for _ in range(8))}",
    ]


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one more node, one CPU each; yields the head's address."""
    if shutil.which("ray") is None:
        pytest.skip("the ray CLI is not installed")
    # Ray puts unix sockets under its temp dir: keep the path short (sockets max ~107 chars).
    temp = Path(tempfile.mkdtemp(prefix="fcray", dir="/tmp"))
    token = f"ray-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, TOKEN_ENV: token, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = [
        "--num-cpus=1",
        "--num-gpus=0",
        "--object-store-memory=80000000",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
    ]
    procs = []
    try:
        procs.append(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    f"--ray-client-server-port={free_port()}",
                    "--include-dashboard=false",
                    f"--temp-dir={temp}",
                    *common,
                    *_node_ports(),
                ],
                env,
                temp / "head.log",
            )
        )
        wait_until(lambda: port_open(port), 60, "the Ray head")
        address = f"127.0.0.1:{port}"
        procs.append(
            _ray_start(
                [f"--address={address}", *common, *_node_ports()],
                env,
                temp / "worker.log",
            )
        )
        res = subprocess.run(
            [sys.executable, "-c", NODES_SCRIPT, address, "60"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        nodes = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else []
        assert len(nodes) == 2, res.stdout + res.stderr + (temp / "worker.log").read_text()
        yield {"address": address, "nodes": nodes, "env": env, "temp": temp}
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        kill_by_token(token)
        assert not pids_with_token(token), "Ray processes left behind"
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_on_a_two_node_ray_cluster_uses_both_nodes(ray_cluster, tmp_path):
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_EXPERIMENT)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fedcascade.cli",
        "run",
        str(experiment),
        "--out",
        str(out),
        "--set",
        f"simulation.ray_address={ray_cluster['address']!r}".replace("'", '"'),
        "--set",
        "simulation.num_cpus_per_client=1",
        # One round trains all three communities at once on the two one-CPU nodes, so each
        # node's actor gets at least one of them.
        "--set",
        "train.rounds=1",
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env=ray_cluster["env"],
        cwd=REPO,
        start_new_session=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rounds and all(sorted(r["workers"]) == ["0", "1", "2"] for r in rounds), rounds
    used = {w for r in rounds for w in r["workers"].values()}
    assert used == set(ray_cluster["nodes"]), (used, ray_cluster["nodes"])
