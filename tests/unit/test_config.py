import pytest

from config import Settings, SettingsError
from config.settings import SETTINGS, settings_table_markdown


def test_defaults_describe_the_embedded_local_profile():
    s = Settings.from_env({})
    assert (s.kafka_embedded, s.postgres_embedded, s.redis_embedded) == (True, True, True)
    assert s.http_port == 8080 and s.http_host == "127.0.0.1"
    assert s.consumer_fetch_max_wait_ms == 20
    assert s.api_key("dev").secret == "dev-secret" and s.api_key("dev").tenant_id == "dev"
    assert s.psp("sandbox").secret == "sandbox-secret"
    assert s.idempotency_retention_s >= 72 * 3600


def test_a_url_replaces_the_embedded_service():
    s = Settings.from_env({"DATABASE_URL": "postgresql://db/x", "KAFKA_URL": "kafka://k:9092", "JACKPOT_SEED_SECRET": "s" * 16})
    assert not s.postgres_embedded and s.database_url == "postgresql://db/x"
    assert not s.kafka_embedded and s.redis_embedded


def test_settings_are_frozen():
    with pytest.raises(Exception):
        Settings.from_env({}).http_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "env",
    [
        {"HTTP_PORT": "eighty"},
        {"HTTP_PORT": "0"},
        {"BROKER_SESSION_TIMEOUT_S": "40"},
        {"BROKER_HEARTBEAT_INTERVAL_S": "10"},
        {"IDEMPOTENCY_RETENTION_S": "3600"},
        {"API_KEYS": "dev:secret"},
        {"API_KEYS": ""},
        {"API_KEYS": "a:s:t,a:s2:t"},
        {"LOG_LEVEL": "loud"},
        {"FAULT_CRASH_POINT": "during_commit:1"},
        {"FAULT_CRASH_POINT": "before_commit"},
        {"FAULT_CRASH_POINT": "after_commit:0"},
    ],
)
def test_bad_values_are_refused(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_a_crash_point_names_a_moment_and_a_commit():
    from config.settings import CrashPoint

    assert Settings.from_env({}).fault_crash_point is None
    assert Settings.from_env({"FAULT_CRASH_POINT": "after_commit:3"}).fault_crash_point == CrashPoint("after_commit", 3)


def test_readme_carries_the_generated_settings_table():
    from config.settings import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    assert settings_table_markdown() in readme, "run `python -m config` and paste the table into README.md"
    assert len(SETTINGS) == len({s.env for s in SETTINGS})


def test_the_public_local_jackpot_secret_is_refused_on_a_real_broker():
    assert Settings.from_env({}).jackpot_seed_secret == b"local-jackpot-seed-secret"
    with pytest.raises(SettingsError, match="JACKPOT_SEED_SECRET"):
        Settings.from_env({"KAFKA_URL": "kafka://broker:9092"})
    assert Settings.from_env({"KAFKA_URL": "kafka://broker:9092", "JACKPOT_SEED_SECRET": "x" * 32})
