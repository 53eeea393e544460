"""Settings: profiles, validation messages, generated and refused secrets."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TIDINGS_BIN
from tidings.settings import Profile, Settings, SettingsError, load_settings

STRONG_SECRET = "kQ3v9Zr2Lw8Yp5Tn1Hx7Bc4Md6Fg0Js-Ua_Ve"
STRONG_KEY = "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0x1c"


def _load(tmp_path: Path, **values: object) -> Settings:
    return load_settings(_env_file=None, data_dir=tmp_path, **values)


def test_embedded_is_the_default_and_generates_secrets_once(tmp_path: Path) -> None:
    first = _load(tmp_path)
    assert first.profile is Profile.EMBEDDED
    assert first.effective_database_url.startswith("sqlite+aiosqlite:///")
    secrets_file = tmp_path / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    second = _load(tmp_path)
    assert first.jwt_secret is not None
    assert second.jwt_secret is not None
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert first.master_key == second.master_key


def test_secrets_and_passwords_stay_out_of_repr(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        database_url="postgresql+asyncpg://tidings:hunter2@db.internal/tidings",
        redis_url="redis://:redispass@cache:6379/0",
        jwt_secret=STRONG_SECRET,
        master_key=STRONG_KEY,
    )
    text = repr(settings) + str(settings) + str(settings.safe_summary())
    for secret in ("hunter2", "redispass", STRONG_SECRET, STRONG_KEY):
        assert secret not in text
    assert settings.profile is Profile.SCALED


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": "eighty"}, "invalid setting TIDINGS_PORT: Input should be a valid integer"),
        (
            {"port": 70000},
            "invalid setting TIDINGS_PORT: Input should be less than or equal to 65535",
        ),
        (
            {"database_url": "mysql://localhost/x"},
            "invalid setting TIDINGS_DATABASE_URL: unsupported driver 'mysql'",
        ),
        (
            {"redis_url": "http://localhost"},
            "invalid setting TIDINGS_REDIS_URL: must start with redis://, rediss:// or unix://",
        ),
        (
            {"database_url": "postgresql+asyncpg://localhost/x"},
            "invalid settings: TIDINGS_REDIS_URL is required when TIDINGS_DATABASE_URL is "
            "PostgreSQL (the scaled profile)",
        ),
        (
            {"database_url": "postgresql+asyncpg://localhost/x", "redis_url": "redis://r"},
            "invalid settings: TIDINGS_JWT_SECRET is required in the scaled profile",
        ),
        (
            {
                "database_url": "postgresql+asyncpg://localhost/x",
                "redis_url": "redis://r",
                "jwt_secret": "changeme",
                "master_key": STRONG_KEY,
            },
            "invalid settings: TIDINGS_JWT_SECRET is a default or weak value; generate a random one",
        ),
        (
            {
                "database_url": "postgresql+asyncpg://localhost/x",
                "redis_url": "redis://r",
                "jwt_secret": "abcdefghijkl",
                "master_key": STRONG_KEY,
            },
            "invalid settings: TIDINGS_JWT_SECRET must be at least 32 bytes",
        ),
        (
            {"master_key": "too-short"},
            "invalid settings: TIDINGS_MASTER_KEY must be 32 random bytes, base64url-encoded",
        ),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_setting(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, **values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_error_message_never_echoes_the_secret(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, master_key="not-base64-$$$-secretvalue")
    assert "secretvalue" not in str(caught.value)


def test_cli_exits_2_with_the_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_PORT="eighty", TIDINGS_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [TIDINGS_BIN, "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tidings: invalid setting TIDINGS_PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    assert result.stdout == ""


def test_cli_refuses_weak_scaled_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1/postgres",
        TIDINGS_REDIS_URL="redis://127.0.0.1:6379/0",
        TIDINGS_JWT_SECRET="secret",
        TIDINGS_MASTER_KEY=STRONG_KEY,
    )
    result = subprocess.run(
        [TIDINGS_BIN, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "TIDINGS_JWT_SECRET is a default or weak value" in result.stderr
    assert "secret" not in result.stderr.replace("TIDINGS_JWT_SECRET", "")
