"""The deployment's helper scripts and files, without starting Flower.

Certificates and keys the scripts make must be accepted by Flower and by the preflight;
``deploy/preflight.py`` must catch bad input with an error naming the flag; both compose
files must be valid for ``docker-compose`` (skipped where it is not installed).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tests.deploy_support import DEPLOY, REPO

_spec = importlib.util.spec_from_file_location("preflight", DEPLOY / "preflight.py")
preflight = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(preflight)


def _bash(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DEPLOY / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    res = _bash(
        "generate_certs.sh",
        "--out",
        str(out),
        "--supernodes",
        "4",
        "--san",
        "DNS:fl.example.org",
        "--san",
        "IP:10.1.2.3",
    )
    assert res.returncode == 0, res.stderr
    return out


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)} | {
        f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)
    }


def test_certificates_cover_compose_hosts_and_loopback(certs):
    assert {"DNS:superlink", "DNS:localhost", "IP:127.0.0.1", "IP:::1"} <= _sans(
        certs / "superlink.pem"
    )
    assert {"DNS:fl.example.org", "IP:10.1.2.3"} <= _sans(certs / "superlink.pem")
    node = _sans(certs / "supernode.pem")
    assert {"DNS:supernode", "DNS:supernode-1", "DNS:supernode-4", "IP:127.0.0.1"} <= node
    for name in ("superlink", "supernode"):
        ok = subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / f"{name}.pem")],
            capture_output=True,
        )
        assert ok.returncode == 0
    # Private keys are readable by their owner only.
    assert oct((certs / "superlink.key").stat().st_mode)[-3:] == "600"
    # The preflight accepts exactly what the SuperLink will be started with.
    preflight.check_superlink(
        [
            f"--ssl-ca-certfile={certs / 'ca.crt'}",
            f"--ssl-certfile={certs / 'superlink.pem'}",
            f"--ssl-keyfile={certs / 'superlink.key'}",
            "--enable-supernode-auth",
        ]
    )


def test_generate_certs_keeps_existing_files_and_rejects_bad_input(certs, tmp_path):
    before = (certs / "ca.crt").read_bytes()
    res = _bash("generate_certs.sh", "--out", str(certs))
    assert res.returncode == 0 and "keeping them" in res.stdout
    assert (certs / "ca.crt").read_bytes() == before
    res = _bash("generate_certs.sh", "--out", str(tmp_path / "x"), "--san", "fl.example.org")
    assert res.returncode == 2
    assert "--san: got 'fl.example.org'; allowed: DNS:<name> or IP:<address>" in res.stderr
    assert not (tmp_path / "x" / "ca.crt").exists()


@pytest.mark.parametrize("tool", ["ssh-keygen", "python"])
def test_node_keys_are_accepted_by_flower(tool, tmp_path):
    env = {}
    if tool == "python":  # a PATH without ssh-keygen exercises the script's fallback
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name in ("bash", "python3", "dirname", "mkdir", "rm", "chmod", "sed"):
            os.symlink(shutil.which(name), bin_dir / name)
        env["PATH"] = str(bin_dir)
    elif shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    res = _bash("generate_node_keys.sh", "--out", str(tmp_path / "keys"), "community-7", env=env)
    assert res.returncode == 0, res.stderr
    key = tmp_path / "keys" / "community-7"
    preflight.check_node_auth_key("--auth-supernode-private-key", str(key))
    # `flwr supernode register` loads the public key with this function.
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(Path(f"{key}.pub"))
    assert oct(key.stat().st_mode)[-3:] == "600"


def test_node_key_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "ed25519"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(preflight.PreflightError, match="wrong key type; allowed: an OpenSSH EC"):
        preflight.check_node_auth_key("--auth-supernode-private-key", str(path))


def test_expired_certificate_is_refused(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 (Python 3.10)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "old.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(preflight.PreflightError, match="is valid only from .*re-issue"):
        preflight.check_certificates("--root-certificates", str(path))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("superlink:8000", True),
        ("10.0.0.5:8000", True),
        ("[::1]:8000", True),
        ("superlink", False),
        ("superlink:0", False),
        ("superlink:http", False),
        ("https://superlink:8000", False),
    ],
)
def test_superlink_address_must_be_host_port(value, ok):
    if ok:
        assert preflight.check_host_port("--superlink", value)[1] == 8000
    else:
        with pytest.raises(preflight.PreflightError, match="--superlink: got .*allowed: host:port"):
            preflight.check_host_port("--superlink", value)


def test_node_config_names_one_community(tmp_path):
    data = tmp_path / "community.csv"
    data.write_text("a,b\n1,2\n")
    check = preflight.check_node_config
    assert check("--node-config", 'community-id=2 state-dir="/app/state"')["community-id"] == 2
    assert check("--node-config", "partition-id=1 num-partitions=3")["partition-id"] == 1
    assert check("--node-config", f'data-path="{data}"')["data-path"] == str(data)
    for bad, msg in [
        ('state-dir="/x"', "must name this SuperNode's community"),
        ("community-id=-1", "community-id must be a whole number >= 0"),
        ("partition-id=3 num-partitions=3", "num-partitions must be a whole number greater"),
        (f"data-path={data}", "string values need double quotes"),
        (f'data-path="{tmp_path}"', "not a regular file"),
    ]:
        with pytest.raises(preflight.PreflightError, match=msg):
            check("--node-config", bad)


def test_supernode_gets_retry_bounds_unless_given():
    base = ["--superlink=superlink:8000", "--insecure", "--node-config=community-id=0"]
    args = preflight.check_supernode(base)
    assert args[-4:] == ["--max-retries", "10", "--max-wait-time", "120.0"]
    given = base + ["--max-retries=3", "--max-wait-time=30"]
    assert preflight.check_supernode(given) == given
    with pytest.raises(preflight.PreflightError, match="--max-retries: got '-1'"):
        preflight.check_supernode(base + ["--max-retries=-1", "--max-wait-time=30"])


def test_preflight_rejects_an_unknown_program(capsys):
    assert preflight.main(["flower-superlnk"]) == 2
    assert "allowed: one of flower-superlink, flower-supernode, flower-superexec" in (
        capsys.readouterr().err
    )


def test_register_script_needs_the_ca(tmp_path):
    res = _bash("register_supernodes.sh", "--ca", str(tmp_path / "nope.crt"), "--connection-only")
    assert res.returncode == 2
    assert "--ca: got '" in res.stderr and "does not exist" in res.stderr


@pytest.mark.parametrize(
    ("compose_file", "env"),
    [
        ("docker-compose.yml", {}),
        (
            "deploy/community.compose.yml",
            {"SUPERLINK_ADDRESS": "fl.example.org:8000", "NODE_CONFIG": "community-id=3"},
        ),
    ],
)
def test_compose_files_are_valid(compose_file, env):
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    res = subprocess.run(
        ["docker-compose", "-f", str(REPO / compose_file), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr


def test_deploy_experiment_matches_the_compose_communities():
    """deploy/experiment.toml has one community per SuperNode, ids 0..n-1 one to one."""
    from flwr.common.config import parse_config_args

    from fedcascade.config import load_config
    from tests.deploy_support import flag_value, load_compose

    services = load_compose()["services"]
    ids = sorted(
        parse_config_args([flag_value(svc["command"], "--node-config")])["community-id"]
        for name, svc in services.items()
        if name.startswith("supernode-")
    )
    cfg = load_config(DEPLOY / "experiment.toml")
    assert ids == list(range(cfg.data.n_communities))
    assert cfg.run_dir.as_posix().startswith("/results/")  # the results volume
