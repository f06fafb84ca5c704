"""Configuration: the documented file works as written; bad files get one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_service.errors import ConfigError
from sync_service.settings import load_settings

DOCUMENTED = """
[state]
url = "sqlite:///mailtrap-sync.db"        # default when absent; PostgreSQL URLs work too

[mailtrap]
account_id = 1001                          # optional: resolved with GET /api/accounts if absent

[[pipelines]]
name = "customers"
lists = ["Customers"]                      # list names (created if missing) or ids
batch_size = 50000                         # contacts per import, 1..50000

[pipelines.source]
connector = "sql"
url = "postgresql+psycopg://crm@db/crm"    # any SQLAlchemy URL
table = "customers"                        # or: query = "SELECT ..."
key = "id"
cursor = "updated_at"

[pipelines.mapping]
email = "email"

[pipelines.mapping.fields]                 # Mailtrap merge_tag = source column
first_name = "first_name"
last_name = "last_name"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAILTRAP_API_TOKEN", "MAILTRAP_ACCOUNT_ID", "MAILTRAP_API_URL",
                 "MAILTRAP_SYNC_STATE_URL", "MAILTRAP_SYNC_CONFIG", "MAILTRAP_SYNC_WEB_LISTEN"):
        monkeypatch.delenv(name, raising=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailtrap-sync.toml"
    path.write_text(text)
    return path


def test_documented_file_loads_as_written(tmp_path: Path) -> None:
    """The configuration shown in the issue and README loads unchanged."""
    settings = load_settings(_write(tmp_path, DOCUMENTED))
    pipeline = settings.pipeline("customers")
    assert settings.mailtrap.account_id == 1001
    assert settings.state.url == "sqlite:///mailtrap-sync.db"
    assert pipeline.lists == ["Customers"]
    assert pipeline.batch_size == 50_000
    assert pipeline.source.connector == "sql"
    assert pipeline.mapping.fields == {"first_name": "first_name", "last_name": "last_name"}


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILTRAP_ACCOUNT_ID, _API_URL, MAILTRAP_SYNC_STATE_URL and the token come from env."""
    monkeypatch.setenv("MAILTRAP_ACCOUNT_ID", "2002")
    monkeypatch.setenv("MAILTRAP_API_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("MAILTRAP_SYNC_STATE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("MAILTRAP_API_TOKEN", "s3cret-token")
    settings = load_settings(_write(tmp_path, DOCUMENTED))
    assert settings.mailtrap.account_id == 2002
    assert settings.mailtrap.api_url == "http://127.0.0.1:9"
    assert settings.state.url == "postgresql+psycopg://u@h/db"
    assert settings.mailtrap.api_token is not None
    assert settings.mailtrap.api_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILTRAP_SYNC_CONFIG names the file when --config is not given."""
    path = _write(tmp_path, DOCUMENTED)
    monkeypatch.setenv("MAILTRAP_SYNC_CONFIG", str(path))
    assert load_settings().pipelines[0].name == "customers"


def test_env_references_in_urls_are_expanded(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} inside a source URL is replaced by the environment's value."""
    monkeypatch.setenv("CRM_PASSWORD", "pw")
    text = DOCUMENTED.replace("crm@db/crm", "crm:${CRM_PASSWORD}@db/crm")
    settings = load_settings(_write(tmp_path, text))
    source = settings.pipelines[0].source
    assert source.url == "postgresql+psycopg://crm:pw@db/crm"  # type: ignore[attr-defined]


def test_unset_env_reference_names_variable_and_pipeline(tmp_path: Path) -> None:
    """An unset ${VAR} is an error naming the variable, the pipeline and the key."""
    text = DOCUMENTED.replace("crm@db/crm", "crm:${NOPE_UNSET}@db/crm")
    with pytest.raises(ConfigError, match=r"pipelines\[0\] \(customers\).*NOPE_UNSET.*source\.url"):
        load_settings(_write(tmp_path, text))


def test_missing_source_key_names_file_pipeline_and_key(tmp_path: Path) -> None:
    """A missing `key` under the source names the file, the pipeline and source.key."""
    text = DOCUMENTED.replace('key = "id"\n', "")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    message = str(info.value)
    assert str(tmp_path / "mailtrap-sync.toml") in message
    assert "pipelines[0] (customers)" in message
    assert "source" in message
    assert "key" in message


@pytest.mark.parametrize(("needle", "replacement", "expected"), [
    ("batch_size = 50000", "batch_size = 50001", "batch_size"),
    ("batch_size = 50000", "batch_size = 0", "batch_size"),
    ('connector = "sql"', 'connector = "nope"', "unknown connector 'nope'"),
    ('name = "customers"', 'name = "bad name!"', "name"),
    ("[pipelines.mapping]", "[pipelines.mapping]\nbogus = 1", "bogus"),
])
def test_bad_values_are_named(tmp_path: Path, needle: str, replacement: str,
                              expected: str) -> None:
    """Out-of-range, unknown and misspelled keys each get an error naming the key."""
    with pytest.raises(ConfigError, match=expected):
        load_settings(_write(tmp_path, DOCUMENTED.replace(needle, replacement)))


def test_token_in_file_is_refused(tmp_path: Path) -> None:
    """The API token is read only from the environment, never from the file."""
    text = DOCUMENTED.replace("account_id = 1001", 'account_id = 1001\napi_token = "abc"')
    with pytest.raises(ConfigError, match="MAILTRAP_API_TOKEN"):
        load_settings(_write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    """Broken TOML and a missing file are configuration errors naming the file."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[state\nurl="))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_duplicate_pipeline_names_are_refused(tmp_path: Path) -> None:
    """Two pipelines may not share a name: the name keys all of a pipeline's state."""
    second = DOCUMENTED[DOCUMENTED.index("[[pipelines]]"):]
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(_write(tmp_path, DOCUMENTED + second))
