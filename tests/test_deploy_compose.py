"""The docker-compose deployment, run as local processes on loopback.

The SuperLink, the ServerApp SuperExec, three SuperNodes and their ClientApp SuperExecs start
with the flags written in ``docker-compose.yml`` (see :mod:`tests.deploy_support` for the
translation), TLS and SuperNode authentication on, keys registered by the compose service
``register-supernodes``. A real fedcascade run must finish with results from every community,
and SuperNodes that are not registered, or that do not trust the deployment CA, must be
refused. Everything is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy_support import (
    DEPLOY,
    REPO,
    TINY_EXPERIMENT,
    LocalTopology,
    flag_value,
    free_port,
    load_compose,
    pids_with_token,
    port_open,
    wait_until,
    with_flag,
)

SUPERNODES = ["supernode-1", "supernode-2", "supernode-3"]


def _script(name: str, *args: str, env: dict | None = None) -> str:
    res = subprocess.run(
        ["bash", str(DEPLOY / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The compose topology, up and with every SuperNode connected; stopped afterwards."""
    work = tmp_path_factory.mktemp("deploy")
    certs, keys = work / "certs", work / "keys"
    _script("generate_certs.sh", "--out", str(certs))
    _script("generate_node_keys.sh", "--out", str(keys), *SUPERNODES, "rogue")
    topo = LocalTopology(load_compose(), work, certs, keys)
    try:
        topo.start("superlink")
        wait_until(lambda: port_open(topo.ports[("superlink", 8000)]), 60, "the SuperLink port")
        reg = topo.run(topo.argv("register-supernodes"), "register-supernodes", timeout=120)
        assert reg.returncode == 0, reg.stdout
        topo.start("superexec-serverapp")
        for node in SUPERNODES:
            topo.start(node)
        for node in SUPERNODES:
            topo.start(f"superexec-clientapp-{node.rsplit('-', 1)[1]}")
        for proc in topo.procs:
            if proc.name in SUPERNODES:
                wait_until(
                    lambda p=proc: "SuperNode ID" in p.text() or p.popen.poll() is not None,
                    90,
                    f"{proc.name} to connect",
                )
                assert proc.popen.poll() is None, topo.logs([proc.name])
        yield topo
    finally:
        hunted = topo.stop_all()
        # Nothing may outlive the test (a hunted pid was killed, but is worth knowing about).
        assert not pids_with_token(topo.token), "processes left behind"
        if hunted:
            print(f"deploy test: killed {len(hunted)} detached Flower processes by token")


def _cli_home(topo: LocalTopology) -> dict[str, str]:
    """FLWR_HOME of a user on the host, with the connection the docs tell them to create."""
    home = topo.workdir / "cli-home"
    env = {"FLWR_HOME": str(home)}
    _script(
        "register_supernodes.sh",
        "--connection-only",
        "--superlink",
        topo.address("superlink", 8000),
        "--ca",
        str(topo.certs_dir / "ca.crt"),
        env={**topo.env("superlink"), **env},
    )
    return env


def _supernode_args(topo: LocalTopology, node: str = "supernode-1") -> list[str]:
    """A SuperNode's compose command, with a Runtime API port of its own (it runs alongside)."""
    return with_flag(topo.raw_argv(node), "--port", str(free_port()))


@pytest.mark.parametrize("rounds", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_compose_run_finishes_with_every_community(deployment, rounds):
    topo = deployment
    experiment = topo.workdir / "tiny.toml"
    experiment.write_text(TINY_EXPERIMENT)
    out_dir = topo.host_path("superexec-serverapp", f"/results/run-{rounds}")
    run_config = f"experiment='{experiment}' overrides='output.dir={out_dir};train.rounds={rounds}'"
    res = topo.run(
        ["flwr", "run", str(REPO), "fedcascade-deploy", "--run-config", run_config, "--stream"],
        "superlink",
        timeout=300,
        env=_cli_home(topo),
        cwd=REPO,
    )
    summary = Path(out_dir) / "summary.json"
    assert res.returncode == 0 and summary.exists(), res.stdout + topo.logs()

    rows = list(csv.DictReader((Path(out_dir) / "communities.csv").open()))
    assert sorted(int(r["community_id"]) for r in rows) == [0, 1, 2]
    lines = (Path(out_dir) / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == rounds
    for rec in records:
        assert sorted(rec["workers"]) == ["0", "1", "2"], rec
    # Each community trained in its own ClientApp process, i.e. on its own "machine".
    assert len(set(records[-1]["workers"].values())) == 3
    # Each community's privacy ledger stays on its machine (volume state-N of its SuperExec)
    # and accumulates across rounds although every round runs in a new ClientApp process.
    assert json.loads(summary.read_text())["n_communities"] == 3
    for n in (1, 2, 3):
        state = topo.workdir / "volumes" / f"state-{n}"
        ledgers = list(state.rglob("community-*.json"))
        assert {p.name for p in ledgers} == {f"community-{n - 1}.json"}, ledgers
        spent = [json.loads(p.read_text()) for p in ledgers]
        assert any(len(led["blocks"]) == rounds for led in spent), spent
        assert all(led["epsilon"] <= led["target_epsilon"] for led in spent)


def test_unregistered_supernode_is_refused(deployment):
    topo = deployment
    args = with_flag(
        _supernode_args(topo), "--auth-supernode-private-key", str(topo.keys_dir / "rogue")
    )
    proc = topo.start("supernode-1", args, name="rogue-supernode")
    code = proc.wait(timeout=60)
    assert code != 0
    assert "Failed to activate SuperNode" in proc.text(), proc.text()


@pytest.mark.parametrize("ca", ["none", "other-ca"])
def test_supernode_without_the_ca_cannot_connect(deployment, ca, tmp_path):
    topo = deployment
    if ca == "none":
        root = None
    else:  # a CA of its own: the SuperLink's certificate does not chain to it
        _script("generate_certs.sh", "--out", str(tmp_path / "other"))
        root = str(tmp_path / "other" / "ca.crt")
    args = with_flag(_supernode_args(topo), "--root-certificates", root)
    proc = topo.start("supernode-1", args, name=f"supernode-ca-{ca}")
    code = proc.wait(timeout=60)
    assert code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in proc.text(), proc.text()


def test_local_commands_keep_every_compose_flag(tmp_path):
    """TLS, node auth and bounded retries are on in the compose file, and the local
    translation changes only paths, hosts and ports."""
    topo = LocalTopology(load_compose(), tmp_path, tmp_path / "certs", tmp_path / "keys")
    link = topo.raw_argv("superlink")
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    for n, node in enumerate(SUPERNODES):
        raw = topo.raw_argv(node)
        assert flag_value(raw, "--node-config").startswith(f"community-id={n}")
        assert flag_value(raw, "--root-certificates") and flag_value(raw, "--max-retries")
        local = topo.argv(node)
        flags = sorted(a.split("=")[0] for a in raw if a.startswith("--"))
        assert sorted(a.split("=")[0] for a in local if a.startswith("--")) == flags
        assert flag_value(local, "--superlink") == topo.address("superlink", 8000)
        assert flag_value(local, "--host") == "127.0.0.1"
        assert (
            Path(flag_value(local, "--root-certificates")).resolve()
            == tmp_path / "certs" / "ca.crt"
        )
        state = topo.host_path(node, "/app/state")
        assert Path(state).resolve() == tmp_path / "volumes" / f"state-{n + 1}"
