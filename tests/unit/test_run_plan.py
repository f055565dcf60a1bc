"""What `make run` starts: embedded services only without their URL, demo traffic only when asked."""
from app.run import plan
from config import Settings
from config.settings import REPO_ROOT


def names(env: dict, demo: bool = False) -> list[str]:
    return [name for name, _ in plan(Settings.from_env(env), (REPO_ROOT / "Procfile").read_text(), demo)]


def test_the_local_run_starts_everything_and_the_demo_only_when_asked():
    assert names({}) == ["broker", "postgres", "redis", "worker", "web"]
    assert names({}, demo=True) == ["broker", "postgres", "redis", "worker", "web", "demo"]
    assert names({"DEMO_ROUNDS_PER_S": "0"}, demo=True) == ["broker", "postgres", "redis", "worker", "web"]
    assert names({"DATABASE_URL": "postgresql://x/y", "WORKER_COUNT": "2"}) == [
        "broker", "redis", "worker.1", "worker.2", "web"]
