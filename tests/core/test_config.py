from __future__ import annotations

from pathlib import Path

import pytest

from touchline.config import SETTINGS, load_settings
from touchline.errors import ConfigError

DOCS = Path(__file__).parents[2] / "docs" / "settings.md"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for s in SETTINGS:
        assert f"`{s.name}`" in text, f"{s.name} missing from docs/settings.md"
        assert s.env_var in text
        assert s.help in text, f"help text of {s.name} in docs/settings.md is out of date"


def test_precedence_argument_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "touchline.toml").write_text('port = 9001\nhost = "0.0.0.0"\nquery_timeout_s = 5\n')
    s = load_settings(tmp_path, env={"TOUCHLINE_PORT": "9002"})
    assert s.port == 9002 and s.source("port") == "env"
    assert s.host == "0.0.0.0" and s.source("host") == "touchline.toml"
    assert s.query_timeout_s == 5.0
    assert s.log_fsync is True and s.source("log_fsync") == "default"
    s = load_settings(tmp_path, env={"TOUCHLINE_PORT": "9002"}, port=9003)
    assert s.port == 9003 and s.source("port") == "argument"


def test_data_dir_from_env(tmp_path: Path) -> None:
    s = load_settings(env={"TOUCHLINE_DATA": str(tmp_path)})
    assert s.data_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"TOUCHLINE_PORT": "eighty"}, "port"), ({"TOUCHLINE_LOG_FSYNC": "maybe"}, "log_fsync")],
)
def test_bad_values_name_the_setting(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(tmp_path, env=env)


def test_unknown_or_broken_toml_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "touchline.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(tmp_path, env={})
    (tmp_path / "touchline.toml").write_text("port = \n")
    with pytest.raises(ConfigError, match=r"touchline\.toml"):
        load_settings(tmp_path, env={})
