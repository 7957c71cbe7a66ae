"""Run the docker-compose deployment as local processes on loopback (for the deploy tests).

No Docker engine is needed: each compose service becomes a local process started with the
service's own ``entrypoint`` + ``command``, translated the way Docker would see them:

* every volume becomes a symlink in a per-service directory standing in for the container's
  file system, and container paths in the arguments are rewritten to it (certificates and
  keys come from a temporary directory, named volumes are temporary directories);
* service hostnames become 127.0.0.1, and every listening port (``--port``) a free one;
* ``--host=0.0.0.0`` becomes ``--host=127.0.0.1``: nothing listens beyond loopback.

A SuperNode and the SuperExec that runs its ClientApp stand for one community's machine, so
the SuperNode's paths resolve in the union of both services' volumes.

Every process gets a unique token in its environment. :meth:`LocalTopology.stop_all` stops
the process groups it started, then finds leftovers (Flower detaches some children into
new sessions) by that token and kills them by pid.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
TOKEN_ENV = "FEDCASCADE_DEPLOY_TEST_TOKEN"
_ENV_REF = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")

# The same tiny synthetic federation the other end-to-end tests use, with three communities
# (two from the majority sub-distribution, one marginalized) to match the three SuperNodes.
TINY_EXPERIMENT = """
name = "deploy-tiny"
seed = 3

[data]
source = "synthetic"

[data.synthetic]
dim = 12
records_per_community = 200

[[data.synthetic.sub_distributions]]
name = "majority"
n_communities = 2
size = 1.0
intrinsic_dim = 2

[[data.synthetic.sub_distributions]]
name = "minority"
n_communities = 1
size = 0.3
intrinsic_dim = 2

[model]
hidden = [16]
embedding_dim = 8
lora_rank = 2

[model.pretrain]
epochs = 3

[privacy]
target_epsilon = 3.0
batch_size = 32

[train]
rounds = 2
lr = 0.1
timeout_seconds = 240

[strategy]
name = "dp-fedavg"
"""


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as a dict (anchors resolved, ``${VAR:-default}`` not yet)."""
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}`` like compose does."""
    env = os.environ if env is None else env
    return _ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll ``pred`` until true or raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def _env_dict(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    return dict(str(item).split("=", 1) for item in value)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """Value of ``--flag=value`` or ``--flag value`` in ``args`` (last one wins)."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(args):
            found = args[i + 1]
    return found


def with_flag(args: Sequence[str], flag: str, value: str | None) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (``None`` removes it)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith(flag + "="):
            continue
        if arg == flag:
            skip = i + 1 < len(args) and not args[i + 1].startswith("--")
            continue
        out.append(arg)
    if value is not None:
        out.append(f"{flag}={value}")
    return out


@dataclass
class Proc:
    """One started process and its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        """Wait for it to exit; its exit status."""
        return self.popen.wait(timeout=timeout)


@dataclass
class LocalTopology:
    """The compose services of ``compose`` mapped onto this machine under ``workdir``.

    Parameters
    ----------
    compose : dict
        The parsed compose file.
    workdir : Path
        Scratch directory: service file systems, named volumes, homes and logs.
    certs_dir, keys_dir : Path
        Stand-ins for ``./deploy/certs`` and ``./deploy/keys``.
    """

    compose: dict[str, Any]
    workdir: Path
    certs_dir: Path
    keys_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.ports: dict[tuple[str, int], int] = {}
        for name in self.services:
            port = flag_value(self.raw_argv(name), "--port")
            if port is not None:
                self.ports[(name, int(port))] = free_port()
        self._roots: dict[str, tuple[Path, list[str]]] = {}

    # ---- translation ------------------------------------------------------------------

    def raw_argv(self, service: str) -> list[str]:
        """The service's entrypoint + command exactly as written in the compose file."""
        svc = self.services[service]
        return [
            expand_env(a) for a in _as_list(svc.get("entrypoint")) + _as_list(svc.get("command"))
        ]

    def _source(self, source: str) -> Path:
        if source.startswith(("./", "../", "/")):
            rel = Path(os.path.normpath(source))
            parts = rel.parts
            if parts[:2] == ("deploy", "certs"):
                return self.certs_dir.joinpath(*parts[2:])
            if parts[:2] == ("deploy", "keys"):
                return self.keys_dir.joinpath(*parts[2:])
            return (REPO / rel).resolve()
        vol = self.workdir / "volumes" / source  # a named volume
        vol.mkdir(parents=True, exist_ok=True)
        return vol

    def mounts(self, service: str) -> list[tuple[Path, str]]:
        """``(host path, container path)`` of the service's volumes."""
        out = []
        for spec in self.services[service].get("volumes", []):
            if isinstance(spec, Mapping):
                source, target = str(spec["source"]), str(spec["target"])
            else:
                source, target = str(spec).split(":")[:2]
            out.append((self._source(expand_env(source)), target))
        return out

    def paired_superexecs(self, service: str) -> list[str]:
        """SuperExec services whose Runtime API address is on ``service``."""
        return [
            name
            for name in self.services
            if (addr := flag_value(self.raw_argv(name), "--runtime-api-address"))
            and addr.rsplit(":", 1)[0] == service
        ]

    def root(self, service: str) -> Path:
        """The directory standing in for the service's container file system."""
        return self._mapping(service)[0]

    def _mapping(self, service: str) -> tuple[Path, list[str]]:
        if service not in self._roots:
            root = self.workdir / "fs" / service
            mounts = self.mounts(service)
            for other in self.paired_superexecs(service):
                mounts += self.mounts(other)
            prefixes: set[str] = set()
            for source, target in mounts:
                link = root / target.lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(source)
                prefixes.add(target)
                if os.path.dirname(target) not in ("/", ""):
                    prefixes.add(os.path.dirname(target))
            (root / "app").mkdir(parents=True, exist_ok=True)
            self._roots[service] = (root, sorted(prefixes, key=len, reverse=True))
        return self._roots[service]

    def host_path(self, service: str, container_path: str) -> str:
        """A container path of ``service`` rewritten to this machine."""
        root, prefixes = self._mapping(service)
        if not prefixes:
            return container_path
        pattern = r"(?<![\w./-])(" + "|".join(map(re.escape, prefixes)) + r")(?=$|[/\"'\s:,])"
        return re.sub(pattern, lambda m: str(root) + m.group(1), container_path)

    def address(self, service: str, port: int) -> str:
        """``127.0.0.1:<port>`` standing in for ``service:port``."""
        return f"127.0.0.1:{self.ports[(service, port)]}"

    def map_arg(self, service: str, arg: str) -> str:
        """One argument rewritten: paths, ``service:port`` addresses and bind hosts."""
        arg = self.host_path(service, arg)
        for (name, port), host_port in self.ports.items():
            arg = re.sub(rf"(?<![\w.-]){re.escape(name)}:{port}\b", f"127.0.0.1:{host_port}", arg)
        return re.sub(r"^--host=0\.0\.0\.0$", "--host=127.0.0.1", arg)

    def argv(self, service: str, args: Sequence[str] | None = None) -> list[str]:
        """The service's command line on this machine (``args`` replaces the compose one)."""
        raw = list(args) if args is not None else self.raw_argv(service)
        mapped = [self.map_arg(service, a) for a in raw]
        # The service's own listening port (a port not in the compose file stays as given).
        port = flag_value(raw, "--port")
        if port is not None and (service, int(port)) in self.ports:
            mapped = with_flag(mapped, "--port", str(self.ports[(service, int(port))]))
        if mapped and mapped[0] in ("python", "python3"):
            mapped[0] = sys.executable
        return mapped

    def env(self, service: str) -> dict[str, str]:
        """Environment: ours, the service's (paths mapped), its own home and the token."""
        home = self.workdir / "home" / service
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for key, value in _env_dict(self.services[service].get("environment")).items():
            env[key] = self.map_arg(service, expand_env(value))
        # A container has its own home; Flower installs apps under FLWR_HOME.
        env.update(
            HOME=str(home),
            FLWR_HOME=str(home / ".flwr"),
            PYTHONUNBUFFERED="1",
            RAY_USAGE_STATS_ENABLED="0",
            PREFLIGHT_MAX_WAIT=env.get("PREFLIGHT_MAX_WAIT", "60"),
        )
        env[TOKEN_ENV] = self.token
        return env

    # ---- processes ----------------------------------------------------------------------

    def start(
        self,
        service: str,
        args: Sequence[str] | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``service`` (optionally with other compose-style ``args`` and extra ``env``)
        in the background."""
        name = name or service
        full_env = self.env(service)
        full_env.update(env or {})
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                self.argv(service, args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=self.root(service) / "app",
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        service: str,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command to completion in ``service``'s environment; kill it on timeout."""
        full_env = self.env(service)
        full_env.update(env or {})
        popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd or self.root(service) / "app",
            start_new_session=True,
            text=True,
        )
        try:
            out, _ = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(popen.pid, signal.SIGKILL)
            out, _ = popen.communicate()
            raise TimeoutError(f"{argv[:3]} did not finish within {timeout:g} s:\n{out}") from None
        return subprocess.CompletedProcess(list(argv), popen.returncode, out)

    def stop_all(self, grace: float = 5.0) -> list[int]:
        """Stop everything started here; return the pids that had to be hunted down."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                _kill_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            _kill_group(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                pass
        return kill_by_token(self.token)

    def logs(self, names: Iterable[str] | None = None, tail: int = 40) -> str:
        """The last lines of each process log (for assertion messages)."""
        out = []
        for proc in self.procs:
            if names is None or proc.name in names:
                lines = proc.text().splitlines()[-tail:]
                out.append(f"----- {proc.name} -----\n" + "\n".join(lines))
        return "\n".join(out)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pids_with_token(token: str) -> list[int]:
    """Pids of live processes whose environment carries ``TOKEN_ENV=token``."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already gone
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_by_token(token: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process carrying ``token``; return the pids found."""
    pids = pids_with_token(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids_with_token(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids
