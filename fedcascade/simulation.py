"""Run one experiment on Flower's simulation engine (Ray backend), in this process."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from fedcascade.config import ExperimentConfig
from fedcascade.errors import FedcascadeError
from fedcascade.results import prepare_run_dir


class RunFailed(FedcascadeError, RuntimeError):
    """The simulation ended without writing its results."""


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flower's Ray backend config from ``[simulation]``."""
    sim = cfg.simulation
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True}
    if sim.ray_address:
        init_args["address"] = sim.ray_address
    else:
        # a Ray started for one run stays on loopback: nothing of it listens on the network
        init_args["_node_ip_address"] = "127.0.0.1"
        if sim.ray_num_cpus:
            init_args["num_cpus"] = sim.ray_num_cpus
    return {
        "client_resources": {
            "num_cpus": sim.num_cpus_per_client,
            "num_gpus": sim.num_gpus_per_client,
        },
        "init_args": init_args,
    }


class Progress:
    """Round progress: one rewriting line on a terminal, one line per round in a pipe."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, server_round: int, rounds: int, accuracy: float | None) -> None:
        acc = f"{accuracy:.4f}" if accuracy is not None else "n/a"
        line = f"round {server_round}/{rounds}  elapsed {time.perf_counter() - self.t0:7.1f}s  mean accuracy {acc}"
        if self.tty:
            end = "\n" if server_round == rounds else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_experiment(
    cfg: ExperimentConfig, run_dir: Path | None = None, progress: Any = None, quiet: bool = True
) -> Path:
    """Run ``cfg`` with one simulated SuperNode per community and return the run directory.

    Raises
    ------
    ConfigError
        If the output directory is not usable (checked before anything starts).
    RunFailed
        If the ServerApp raised; its exception is chained.
    """
    from flwr.simulation import run_simulation

    from fedcascade.client_app import app as client_app
    from fedcascade.server_app import make_server_app

    run_dir = (run_dir or cfg.run_dir).resolve()
    prepare_run_dir(run_dir, cfg.output.overwrite)  # fail fast, before Ray starts
    if cfg.simulation.engine == "inline":
        from fedcascade.inline_grid import InlineGrid
        from fedcascade.server_app import run_on_grid

        return run_on_grid(InlineGrid(cfg.data.n_communities), cfg, progress, run_dir)
    errors: list[BaseException] = []
    server_app = make_server_app(cfg, progress, run_dir, errors)
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.data.n_communities,
                backend_config=backend_config(cfg),
            )
    except Exception:  # the ServerApp's own exception is in `errors`; re-raised below
        if not errors:
            raise
    finally:
        flwr_logger.setLevel(old_level)
    if errors:
        if isinstance(errors[0], FedcascadeError):
            raise errors[0]
        raise RunFailed(f"the run failed: {errors[0]!r}") from errors[0]
    if not (run_dir / "summary.json").exists():
        raise RunFailed(
            f"the run ended without writing {run_dir / 'summary.json'}; see the log above"
        )
    return run_dir
