"""Check a Flower deployment command's inputs, then run it.

Usage::

    python deploy/preflight.py flower-supernode  [the flower-supernode flags]
    python deploy/preflight.py flower-superlink  [the flower-superlink flags]
    python deploy/preflight.py flower-superexec  [the flower-superexec flags]

Flower 1.42 handles some bad inputs poorly: a SuperNode given a file that is not a PEM
certificate prints a traceback and then hangs forever, a missing private key is a bare
traceback, and without ``--max-retries``/``--max-wait-time`` a SuperNode pointed at a wrong
address retries forever. This wrapper checks the files and values the command names (the
certificates parse, keys match their certificates, the data path of the community exists,
the addresses are ``host:port``), fails in seconds with one line that names the flag, the
value and what is allowed, and otherwise runs the command unchanged. It also bounds
retrying: a SuperNode without ``--max-retries``/``--max-wait-time`` gets the defaults below,
and a SuperExec waits at most ``PREFLIGHT_MAX_WAIT`` seconds (default 120) for its Runtime
API to accept connections. When the command exits non-zero, a last line lists the usual
causes.

It imports only the standard library, ``cryptography`` and ``flwr`` (present in every Flower
image), so the stock ``flwr/superlink`` and ``flwr/supernode`` images can run it from a
read-only bind mount. Exit status: 2 for a failed check, otherwise the command's own status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PROGRAMS = ("flower-superlink", "flower-supernode", "flower-superexec")
DEFAULT_MAX_RETRIES = 10
DEFAULT_MAX_WAIT_TIME = 120.0
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1, ec.SECP224R1, ec.SECP192R1)

EXIT_HINTS = {
    "flower-supernode": (
        "usual causes: 'Failed to activate SuperNode' = its public key is not registered "
        "on the SuperLink (deploy/register_supernodes.sh); 'CERTIFICATE_VERIFY_FAILED' = "
        "--root-certificates is not the CA that signed the SuperLink certificate, or the "
        "--superlink host is not among its SANs (deploy/generate_certs.sh --san); "
        "'Connection refused' / 'Name or service not known' = wrong --superlink address "
        "or the SuperLink is down."
    ),
    "flower-superlink": (
        "usual causes: the port is already in use, or a certificate/key file is unreadable "
        "by this user (the Flower images run as uid 49999)."
    ),
    "flower-superexec": (
        "usual causes: its Runtime API (the SuperLink for the ServerApp, the SuperNode for "
        "a ClientApp) went away, or --root-certificates does not match its certificate."
    ),
}


class PreflightError(Exception):
    """One failed check: the flag, the value given and what is allowed."""

    def __init__(self, flag: str, given: Any, allowed: str) -> None:
        self.flag = flag
        self.given = given
        self.allowed = allowed
        super().__init__(f"{flag}: got {given!r}; {allowed}")


def log(level: str, msg: str) -> None:
    """Print one line that says where it comes from (stderr, unbuffered)."""
    print(f"preflight {level}: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Single checks: plain functions, each raising PreflightError
# --------------------------------------------------------------------------------------


def check_host_port(flag: str, value: str | None) -> tuple[str, int]:
    """Return ``(host, port)`` of a ``host:port`` string (IPv6 as ``[addr]:port``)."""
    allowed = "allowed: host:port, e.g. superlink:8000, 10.0.0.5:8000 or [::1]:8000"
    if not value or "://" in value:
        raise PreflightError(flag, value, allowed + " (no URL scheme)")
    host, sep, port_s = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise PreflightError(flag, value, allowed + " with a port in 1..65535")
    return host, int(port_s)


def _readable_file(flag: str, path: str | None, what: str) -> bytes:
    if not path:
        raise PreflightError(flag, path, f"allowed: the path of {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise PreflightError(flag, path, f"the file does not exist; allowed: {what}")
    if not p.is_file():
        raise PreflightError(flag, path, f"not a regular file; allowed: {what}")
    try:
        return p.read_bytes()
    except PermissionError:
        raise PreflightError(
            flag,
            path,
            f"not readable by uid {os.getuid()}; allowed: {what} readable by this user "
            "(in the Flower images: chown 49999 or chmod 644 the file)",
        ) from None


def check_certificates(flag: str, path: str | None) -> list[x509.Certificate]:
    """Load PEM certificates (a CA bundle may hold several) and check their dates."""
    what = "a PEM certificate file (-----BEGIN CERTIFICATE-----)"
    data = _readable_file(flag, path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PreflightError(flag, path, f"no certificate could be read; allowed: {what}") from None
    now = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 (datetime.UTC needs Python 3.11)
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PreflightError(
                flag,
                path,
                f"certificate '{cert.subject.rfc4514_string()}' is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; "
                "allowed: a currently valid certificate (re-issue with "
                "deploy/generate_certs.sh --force)",
            )
    return certs


def check_tls_private_key(flag: str, path: str | None, cert: x509.Certificate) -> None:
    """Check that a PEM private key loads and belongs to ``cert``."""
    what = "the unencrypted PEM private key of the certificate"
    data = _readable_file(flag, path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PreflightError(flag, path, f"not a readable key; allowed: {what}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise PreflightError(
            flag, path, "this key does not belong to the given certificate; allowed: " + what
        )


def check_issued_by(
    flag: str, path: str, cert: x509.Certificate, cas: Sequence[x509.Certificate]
) -> None:
    """Check that ``cert`` is signed by one of ``cas``."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (InvalidSignature, ValueError, TypeError):
            continue
    raise PreflightError(
        flag, path, "this certificate is not signed by the CA given with --ssl-ca-certfile"
    )


def check_node_auth_key(flag: str, path: str | None) -> None:
    """Check a SuperNode authentication key: OpenSSH private key on a NIST EC curve."""
    what = (
        "an OpenSSH EC private key on a NIST curve (make one with "
        "deploy/generate_node_keys.sh NAME)"
    )
    data = _readable_file(flag, path, what)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PreflightError(flag, path, f"not a readable key; allowed: {what}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        raise PreflightError(flag, path, f"wrong key type; allowed: {what}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_node_config(flag: str, value: str | None) -> dict[str, Any]:
    """Parse the node config like Flower does and check that it names the community.

    A SuperNode is one community, named by ``community-id=<int>`` or, Flower-style, by
    ``partition-id=<int>`` (with an optional ``num-partitions``); a community with real data
    also gives ``data-path="<csv file>"``, which must exist here.
    """
    from flwr.common.config import parse_config_args  # the parser flower-supernode uses

    example = "community-id=0' or 'data-path=\"/data/community.csv\""
    try:
        config = parse_config_args([value]) if value else {}
    except Exception:  # flwr raises click.ClickException for invalid TOML values
        raise PreflightError(
            flag,
            value,
            f"not space-separated key=value pairs with TOML values; allowed e.g. '{example}' "
            "(string values need double quotes)",
        ) from None
    if not {"community-id", "partition-id", "data-path"} & set(config):
        raise PreflightError(
            flag,
            value,
            f"it must name this SuperNode's community; allowed e.g. '{example}'",
        )
    for key in ("community-id", "partition-id"):
        if key in config and (not _whole(config[key]) or config[key] < 0):
            raise PreflightError(flag, value, f"{key} must be a whole number >= 0")
    if "num-partitions" in config:
        num = config["num-partitions"]
        if not _whole(num) or not 0 <= config.get("partition-id", 0) < num:
            raise PreflightError(
                flag, value, "num-partitions must be a whole number greater than partition-id"
            )
    if "data-path" in config:
        path = config["data-path"]
        if not isinstance(path, str):
            raise PreflightError(
                flag, value, 'data-path must be a quoted string: data-path="/data/x.csv"'
            )
        _readable_file(
            f"{flag} data-path",
            path,
            "the community's data file, mounted read-only into this container and into "
            "its ClientApp SuperExec",
        )
    return config


def wait_for_port(flag: str, host: str, port: int, max_wait: float) -> None:
    """Wait until ``host:port`` accepts TCP connections, at most ``max_wait`` seconds."""
    deadline = time.monotonic() + max_wait
    last_err: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as err:
            last_err = err
        if time.monotonic() >= deadline:
            raise PreflightError(
                flag,
                f"{host}:{port}",
                f"nothing accepted connections there for {max_wait:g} s ({last_err}); allowed: "
                "the address of a running Runtime API (raise PREFLIGHT_MAX_WAIT to wait longer)",
            )
        time.sleep(1.0)


# --------------------------------------------------------------------------------------
# Per-program checks
# --------------------------------------------------------------------------------------


def _parser(*flags: str, switches: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in flags:
        parser.add_argument(flag)
    for switch in switches:
        parser.add_argument(switch, action="store_true")
    return parser


def check_superlink(args: list[str]) -> list[str]:
    """Check flower-superlink flags; return them unchanged."""
    ns, _ = _parser(
        "--ssl-certfile",
        "--ssl-keyfile",
        "--ssl-ca-certfile",
        "--database",
        "--port",
        switches=("--insecure", "--enable-supernode-auth"),
    ).parse_known_args(args)
    if ns.port is not None and not (ns.port.isdigit() and 1 <= int(ns.port) <= 65535):
        raise PreflightError("--port", ns.port, "allowed: a port number in 1..65535")
    if ns.insecure:
        log("WARNING", "--insecure: TLS is off; SuperNode authentication cannot be used")
    else:
        for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"):
            if not getattr(ns, flag[2:].replace("-", "_")):
                raise PreflightError(
                    flag,
                    None,
                    "required with TLS on (make the files with deploy/generate_certs.sh)",
                )
        cas = check_certificates("--ssl-ca-certfile", ns.ssl_ca_certfile)
        cert = check_certificates("--ssl-certfile", ns.ssl_certfile)[0]
        check_tls_private_key("--ssl-keyfile", ns.ssl_keyfile, cert)
        check_issued_by("--ssl-certfile", ns.ssl_certfile, cert, cas)
        if not ns.enable_supernode_auth:
            log("WARNING", "--enable-supernode-auth is off: any SuperNode may join")
    if ns.database and not ns.database.startswith(":"):
        parent = Path(ns.database).expanduser().resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise PreflightError(
                "--database",
                ns.database,
                f"directory {parent} does not exist or is not writable by uid {os.getuid()}",
            )
    return args


def check_supernode(args: list[str]) -> list[str]:
    """Check flower-supernode flags; return them with retry bounds added if absent."""
    ns, _ = _parser(
        "--superlink",
        "--root-certificates",
        "--auth-supernode-private-key",
        "--node-config",
        "--max-retries",
        "--max-wait-time",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--ssl-ca-certfile",
        switches=("--insecure",),
    ).parse_known_args(args)
    check_host_port("--superlink", ns.superlink)
    if ns.insecure:
        log("WARNING", "--insecure: the link to the SuperLink is not encrypted")
    elif ns.root_certificates:
        check_certificates("--root-certificates", ns.root_certificates)
    else:
        log(
            "WARNING",
            "--root-certificates not given: the SuperLink certificate is checked against the "
            "system CAs only, which fails for a deployment CA (deploy/certs/ca.crt)",
        )
    if ns.auth_supernode_private_key:
        check_node_auth_key("--auth-supernode-private-key", ns.auth_supernode_private_key)
    else:
        log(
            "WARNING",
            "--auth-supernode-private-key not given: a SuperLink with node auth refuses this node",
        )
    if ns.ssl_certfile or ns.ssl_keyfile:
        cert = check_certificates("--ssl-certfile", ns.ssl_certfile)[0]
        check_tls_private_key("--ssl-keyfile", ns.ssl_keyfile, cert)
        if ns.ssl_ca_certfile:
            check_issued_by(
                "--ssl-certfile",
                ns.ssl_certfile,
                cert,
                check_certificates("--ssl-ca-certfile", ns.ssl_ca_certfile),
            )
    check_node_config("--node-config", ns.node_config)
    out = list(args)
    for flag, value, default in (
        ("--max-retries", ns.max_retries, DEFAULT_MAX_RETRIES),
        ("--max-wait-time", ns.max_wait_time, DEFAULT_MAX_WAIT_TIME),
    ):
        if value is None:
            log(
                "INFO",
                f"{flag} not given: using {default} so a bad address fails instead of retrying forever",
            )
            out += [flag, str(default)]
        else:
            try:
                ok = float(value) >= 0 and (flag != "--max-retries" or value.isdigit())
            except ValueError:
                ok = False
            if not ok:
                raise PreflightError(
                    flag, value, "allowed: a number >= 0 (a whole number for --max-retries)"
                )
    return out


def check_superexec(args: list[str]) -> list[str]:
    """Check flower-superexec flags and wait (bounded) for its Runtime API."""
    ns, _ = _parser(
        "--runtime-api-address", "--root-certificates", switches=("--insecure",)
    ).parse_known_args(args)
    host, port = check_host_port("--runtime-api-address", ns.runtime_api_address)
    if not ns.insecure:
        if not ns.root_certificates:
            raise PreflightError(
                "--root-certificates",
                None,
                "required with TLS on: the CA that signed the Runtime API certificate",
            )
        check_certificates("--root-certificates", ns.root_certificates)
    wait_for_port(
        "--runtime-api-address", host, port, float(os.environ.get("PREFLIGHT_MAX_WAIT", "120"))
    )
    return args


CHECKS: dict[str, Callable[[list[str]], list[str]]] = {
    "flower-superlink": check_superlink,
    "flower-supernode": check_supernode,
    "flower-superexec": check_superexec,
}


def run(program: str, args: list[str]) -> int:
    """Run ``program`` with ``args``, forwarding termination signals; return its status."""
    child = subprocess.Popen([program, *args])

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        log("ERROR", f"{program} exited with status {code}; {EXIT_HINTS[program]}")
    # A child killed by a signal reports -N; a shell reports that as 128 + N.
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``preflight.py PROGRAM [FLAGS...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in PROGRAMS:
        log("ERROR", f"first argument: got {argv[:1]}; allowed: one of {', '.join(PROGRAMS)}")
        return 2
    program, args = argv[0], argv[1:]
    try:
        args = CHECKS[program](args)
    except PreflightError as err:
        log("ERROR", f"{program} {err}")
        return 2
    log("INFO", f"{program}: inputs checked; starting it")
    return run(program, args)


if __name__ == "__main__":
    sys.exit(main())
