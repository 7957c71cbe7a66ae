"""Every class of bad config gives one clear error naming the key, and nothing is written."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.config import load_config, parse_override
from fedcascade.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_quickstart_config_is_valid():
    cfg = load_config(QUICK)
    assert cfg.name == "quickstart"
    assert cfg.train.rounds >= 1
    assert cfg.data.n_communities >= 4


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("train.rounds=0", "train.rounds", ">= 1"),
        ("privacy.target_epsilon=0", "privacy.target_epsilon", "> 0"),
        ("privacy.target_epsilon=-1", "privacy.target_epsilon", "> 0"),
        ("privacy.delta=1.0", "privacy.delta", ""),
        ("train.lr='fast'", "train.lr", "a number"),
        ("train.rounds=2.5", "train.rounds", "an integer"),
        ("privacy.accountant='gdp'", "privacy.accountant", "'prv'"),
        ("strategy.name='fedavgg'", "strategy.name", "fedavg"),
        ("train.roundz=3", "train.roundz", "rounds"),
        ("nonsense.key=1", "nonsense", "one of the keys"),
        ("privacy.enabled=3", "privacy.enabled", "true or false"),
    ],
)
def test_bad_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config(QUICK, [override])
    msg = str(ei.value)
    assert ei.value.key.startswith(key), msg
    assert f"'{ei.value.key}'" in msg
    assert fragment in msg


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = write(tmp_path, "[train]\nlocal_epoch = 2\n")
    with pytest.raises(ConfigError, match="did you mean 'local_epochs'"):
        load_config(p)


def test_more_communities_than_records_is_refused(tmp_path):
    p = write(
        tmp_path,
        '[data]\nsource = "digits"\n[data.digits]\nrecords_per_community = 100000\n',
    )
    with pytest.raises(ConfigError):
        load_config(p)


def test_toml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="TOML parse error"):
        load_config(write(tmp_path, "[train\nrounds = 1"))
    with pytest.raises(ConfigError, match="existing experiment TOML"):
        load_config(tmp_path / "nope.toml")


def test_override_syntax():
    assert parse_override("train.rounds=5") == ("train.rounds", 5)
    assert parse_override("strategy.name=ifca") == ("strategy.name", "ifca")
    assert parse_override("model.hidden=[8, 8]") == ("model.hidden", [8, 8])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.rounds")


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(QUICK), "--set", "privacy.target_epsilon=0", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "privacy.target_epsilon" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_non_empty_output_dir(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = main(["run", str(QUICK), "--out", str(out)])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_help_is_accurate():
    res = subprocess.run(
        [sys.executable, "-m", "fedcascade.cli", "run", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    for word in ("--set", "--out", "--overwrite", "CONFIG"):
        assert word in res.stdout


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_per_round_in_a_pipe_and_one_rewriting_line_on_a_terminal():
    from fedcascade.simulation import Progress

    pipe = io.StringIO()
    p = Progress(pipe)
    for r in (1, 2, 3):
        p(r, 3, 0.5)
    assert pipe.getvalue().count("\n") == 3 and "round 3/3" in pipe.getvalue()
    tty = _Tty()
    p = Progress(tty)
    for r in (1, 2, 3):
        p(r, 3, None)
    out = tty.getvalue()
    assert out.count("\r") == 3 and out.count("\n") == 1 and "mean accuracy n/a" in out
