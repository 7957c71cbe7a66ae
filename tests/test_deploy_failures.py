"""Bad deployment input ends in seconds with one clear line and a non-zero exit.

Each case starts a compose service exactly as ``docker-compose.yml`` writes it (through
``deploy/preflight.py``), with one input broken, and checks that the process exits non-zero
within a bound and says what is wrong. No SuperLink runs here.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.deploy_support import (
    DEPLOY,
    LocalTopology,
    free_port,
    load_compose,
    pids_with_token,
    with_flag,
)


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy-failures")
    certs, keys, other = work / "certs", work / "keys", work / "other-ca"
    for args in (
        ["generate_certs.sh", "--out", str(certs)],
        ["generate_certs.sh", "--out", str(other)],
        ["generate_node_keys.sh", "--out", str(keys), "supernode-1"],
    ):
        subprocess.run(["bash", str(DEPLOY / args[0]), *args[1:]], check=True, capture_output=True)
    (work / "garbage.crt").write_text("this is not a certificate\n")
    t = LocalTopology(load_compose(), work, certs, keys)
    try:
        yield t
    finally:
        t.stop_all()
        assert not pids_with_token(t.token), "processes left behind"


def _run(topo: LocalTopology, service: str, args: list[str], bound: float, env=None):
    """Start, wait at most ``bound`` seconds, return (exit status, log text, seconds)."""
    t0 = time.monotonic()
    proc = topo.start(service, args, name=f"{service}-{len(topo.procs)}", env=env)
    try:
        code = proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{service} still running after {bound} s:\n{proc.text()[-3000:]}")
    return code, proc.text(), time.monotonic() - t0


def _supernode(topo: LocalTopology, **flags: str | None) -> list[str]:
    args = with_flag(topo.raw_argv("supernode-1"), "--port", str(free_port()))
    for flag, value in flags.items():
        args = with_flag(args, "--" + flag.replace("_", "-"), value)
    return args


def test_supernode_pointed_at_a_wrong_address_gives_up(topo):
    # Nothing listens on this port; the bound is the one the flags set.
    args = _supernode(
        topo, superlink=f"127.0.0.1:{free_port()}", max_retries="2", max_wait_time="8"
    )
    code, log, seconds = _run(topo, "supernode-1", args, bound=60)
    assert code != 0 and seconds < 60
    assert "Connection refused" in log and "Giving up reconnection" in log, log
    assert "preflight ERROR: flower-supernode exited with status" in log


def test_supernode_without_retry_bounds_gets_them(topo):
    args = [a for a in _supernode(topo, superlink=f"127.0.0.1:{free_port()}") if "max-" not in a]
    code, log, _ = _run(topo, "supernode-1", args + ["--max-retries=1"], bound=60)
    assert code != 0
    assert "--max-wait-time not given: using 120" in log, log


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            {"node_config": 'community-id=0 data-path="/data/missing.csv"'},
            "--node-config data-path: got '/data/missing.csv'; the file does not exist",
        ),
        (
            {"node_config": "data-path=/data/community.csv"},
            "--node-config: got 'data-path=/data/community.csv'; not space-separated key=value",
        ),
        (
            {"root_certificates": "GARBAGE"},
            "--root-certificates: got '{work}/garbage.crt'; no certificate could be read",
        ),
        (
            {"root_certificates": "/app/certificates/missing-ca.crt"},
            "--root-certificates: got '{root}/app/certificates/missing-ca.crt'; the file does not exist",
        ),
        (
            {"auth_supernode_private_key": "/app/keys/missing.key"},
            "--auth-supernode-private-key: got '{root}/app/keys/missing.key'; the file does not exist",
        ),
        (
            {"ssl_keyfile": "/app/certificates/ca.crt"},
            "--ssl-keyfile: got '{root}/app/certificates/ca.crt'; not a readable key",
        ),
        ({"superlink": "https://fl.example.org:8000"}, "--superlink: got 'https://fl.example"),
    ],
    ids=[
        "missing-data-path",
        "unquoted-data-path",
        "garbage-ca",
        "missing-ca",
        "missing-key",
        "cert-as-key",
        "url",
    ],
)
def test_supernode_bad_input_fails_fast_naming_the_flag(topo, flags, expected):
    if flags.get("root_certificates") == "GARBAGE":
        flags = {"root_certificates": str(topo.workdir / "garbage.crt")}
    code, log, seconds = _run(topo, "supernode-1", _supernode(topo, **flags), bound=30)
    expected = expected.format(work=topo.workdir, root=topo.root("supernode-1"))
    assert code == 2 and seconds < 30
    assert f"preflight ERROR: flower-supernode {expected}" in log, log


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        (
            "--ssl-keyfile",
            "/app/certificates/ca.crt",
            "--ssl-keyfile: got '{root}/app/certificates/ca.crt'; not a readable key",
        ),
        (
            "--ssl-ca-certfile",
            "OTHER",
            "--ssl-certfile: got '{root}/app/certificates/superlink.pem'; this certificate is "
            "not signed by the CA given with --ssl-ca-certfile",
        ),
        ("--ssl-certfile", "GARBAGE", "--ssl-certfile: got '{work}/garbage.crt'; no certificate"),
    ],
    ids=["key-is-a-cert", "other-ca", "garbage-cert"],
)
def test_superlink_bad_certificate_fails_fast(topo, flag, value, expected):
    value = {
        "OTHER": str(topo.workdir / "other-ca" / "ca.crt"),
        "GARBAGE": str(topo.workdir / "garbage.crt"),
    }.get(value, value)
    args = with_flag(topo.raw_argv("superlink"), flag, value)
    args = with_flag(args, "--port", str(free_port()))
    code, log, seconds = _run(topo, "superlink", args, bound=30)
    expected = expected.format(work=topo.workdir, root=topo.root("superlink"))
    assert code == 2 and seconds < 30
    assert f"preflight ERROR: flower-superlink {expected}" in log, log


def test_superlink_key_of_another_certificate_fails_fast(topo):
    args = with_flag(
        topo.raw_argv("superlink"), "--ssl-keyfile", str(topo.certs_dir / "supernode.key")
    )
    args = with_flag(args, "--port", str(free_port()))
    code, log, _ = _run(topo, "superlink", args, bound=30)
    assert code == 2
    assert "this key does not belong to the given certificate" in log, log


def test_superexec_without_its_runtime_api_gives_up(topo):
    # supernode-1 is not running: its ClientApp SuperExec waits PREFLIGHT_MAX_WAIT, then exits.
    code, log, seconds = _run(
        topo, "superexec-clientapp-1", None, bound=40, env={"PREFLIGHT_MAX_WAIT": "3"}
    )
    assert code == 2 and seconds < 40
    assert "--runtime-api-address: got '127.0.0.1:" in log
    assert "nothing accepted connections there for 3 s" in log, log
