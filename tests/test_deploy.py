"""Deployment files checked without a Docker engine: the Dockerfiles, .dockerignore, docker-compose.yml.

No image is built here. The tests hold the files to the code they deploy: COPY sources exist in
the build context, entry points and health checks name real modules and endpoints, every
``HC_*`` variable is a field of ``service.settings.Settings``, the compose train command parses
with the training CLI, and the service imports nothing beyond what the image installs.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TRAIN_DOCKERFILE = ROOT / "training" / "Dockerfile"
# image (= the final stage's name) -> its Dockerfile
IMAGES = {"api": DOCKERFILE, "train": TRAIN_DOCKERFILE}
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
READY_PATH = "/health/ready"
ENV_PREFIX = "HC_"
# Training-only libraries that must never load in the API process.
TRAIN_ONLY_MODULES = ("sklearn", "nltk", "matplotlib", "tqdm", "scipy")


# --- Dockerfile parsing -----------------------------------------------------------------


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined; comment lines dropped (also inside one)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current.strip())
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert match, f"cannot parse FROM line: {line}"
            stages.append(Stage(name=(match.group(2) or str(len(stages))).lower(), parent=match.group(1).lower()))
        elif keyword != "ARG" or stages:  # ARGs before the first FROM belong to no stage
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword, rest))
    return stages


def _chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    by_name = {s.name: s for s in stages}
    chain = []
    while name in by_name:
        chain.append(by_name[name])
        name = by_name[name].parent
    return chain[::-1]


def _effective(stages: list[Stage], name: str, keyword: str) -> list[str]:
    """Every ``keyword`` instruction a stage runs with, inherited ones first."""
    return [rest for s in _chain(stages, name) for kw, rest in s.instructions if kw == keyword]


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags = {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.strip()
    return flags, rest


def _exec_form(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _env(stages: list[Stage], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _effective(stages, name, "ENV"):
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def _copies(stages: list[Stage]) -> list[tuple[str, dict[str, str], list[str], str]]:
    """(stage, flags, sources, destination) of every COPY/ADD."""
    found = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword in ("COPY", "ADD"):
                flags, rest = _split_flags(rest)
                parts = _exec_form(rest)
                found.append((stage.name, flags, parts[:-1], parts[-1]))
    return found


def _dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_dockerignored(relpath: str) -> bool:
    """Docker's rule: a path is excluded when it or a parent matches; later ``!`` lines re-include."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in _dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """The API image's Dockerfile."""
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def train_stages() -> list[Stage]:
    return parse_dockerfile(TRAIN_DOCKERFILE)


def _stages_of(image: str) -> list[Stage]:
    return parse_dockerfile(IMAGES[image])


@pytest.mark.parametrize("image", IMAGES)
def test_each_dockerfile_ends_with_its_image_and_holds_nothing_else(image: str) -> None:
    stages = _stages_of(image)
    names = [s.name for s in stages]
    # `docker build .` (or -f training/Dockerfile) builds the last stage: the image itself.
    assert names[-1] == image, names
    # The classic builder (no BuildKit, e.g. docker-compose 1.29's default) builds every stage up
    # to the target, used or not: so every stage here must be one the image is built from.
    needed = {s.name for s in _chain(stages, image)}
    for stage, flags, _, _ in _copies(stages):
        if "from" in flags and stage in needed:
            needed |= {s.name for s in _chain(stages, flags["from"].lower())}
    assert set(names) == needed, f"{IMAGES[image].relative_to(ROOT)}: stages {set(names) - needed} are not needed"


def test_api_image_copies_no_training_code(stages: list[Stage]) -> None:
    sources = {src.rstrip("/") for _, flags, srcs, _ in _copies(stages) if "from" not in flags for src in srcs}
    assert {"contract", "service"} <= sources
    assert not any(src == "training" or src.startswith("training/") for src in sources), sources


def test_torch_layer_is_shared_by_both_images(stages: list[Stage], train_stages: list[Stage]) -> None:
    """Same instructions up to the torch install: the second build reuses the biggest layer."""

    def upto_torch(found: list[Stage]) -> list[tuple[str, list[tuple[str, str]]]]:
        return [(s.name, s.instructions) for s in _chain(found, "torch")]

    assert upto_torch(stages) == upto_torch(train_stages)
    assert [i for i in parse_dockerfile(DOCKERFILE)[0].instructions] == train_stages[0].instructions


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        (".venv", ".venv/bin/python", True),
        ("**/__pycache__", "service/__pycache__/app.cpython-311.pyc", True),
        ("artifacts/.tmp-*", "artifacts/.tmp-123/model.pt", True),
        ("artifacts/.tmp-*", "artifacts/20261129T105000Z-3f2a1c/model.pt", False),
        ("tests", "training/tests.py", False),
    ],
)
def test_dockerignore_matcher(pattern: str, path: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_dockerignore_patterns", lambda: [pattern])
    assert is_dockerignored(path) is expected


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_are_in_the_build_context(image: str) -> None:
    stages = _stages_of(image)
    local = [(stage, srcs) for stage, flags, srcs, _ in _copies(stages) if "from" not in flags]
    assert local, "no COPY from the build context"
    for stage, sources in local:
        for src in sources:
            matches = list(ROOT.glob(src.rstrip("/"))) if any(c in src for c in "*?[") else [ROOT / src]
            assert matches and all(m.exists() for m in matches), f"stage {stage}: COPY source {src} missing"
            assert not is_dockerignored(src.rstrip("/")), f"stage {stage}: COPY source {src} is in .dockerignore"


@pytest.mark.parametrize("image", IMAGES)
def test_copy_from_names_earlier_stages(image: str) -> None:
    stages = _stages_of(image)
    names = [s.name for s in stages]
    for stage, flags, _, _ in _copies(stages):
        if "from" in flags:
            assert flags["from"].lower() in names[: names.index(stage)], f"{stage}: COPY --from={flags['from']}"


def test_project_sources_the_build_needs_are_not_ignored() -> None:
    # pyproject.toml names README.md as the readme: setuptools fails without it.
    sources = ("service/__init__.py", "contract/__init__.py", "training/__init__.py")
    for path in ("pyproject.toml", "README.md", "constraints.txt", *sources):
        assert not is_dockerignored(path), path


@pytest.mark.parametrize("image", IMAGES)
def test_torch_pin_matches_constraints_and_pyproject(image: str) -> None:
    stages = _stages_of(image)
    text = IMAGES[image].read_text()
    pins = {m for m in re.findall(r"torch==([\w.+-]+)", text)}
    constraints = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.MULTILINE)
    pyproject = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert constraints and pyproject
    assert pins == {constraints.group(1)} == {pyproject.group(1)}
    installs = [r for s in stages for kw, r in s.instructions if kw == "RUN" and "pip install" in r]
    assert installs and all("-c constraints.txt" in r or "--no-deps" in r for r in installs), "pinned installs"


@pytest.mark.parametrize("image", IMAGES)
def test_torch_comes_only_from_its_index_and_is_checked(image: str) -> None:
    """No silent fallback to PyPI's CUDA build: torch from TORCH_INDEX_URL alone, then verified."""
    stages = _stages_of(image)
    runs = [r for s in _chain(stages, "torch") for kw, r in s.instructions if kw == "RUN"]
    commands = [c.strip() for r in runs for c in r.split("&&")]
    torch_install = next(c for c in commands if "pip install" in c and "--index-url" in c)
    assert "TORCH_INDEX_URL" in torch_install and "--no-deps" in torch_install
    assert "--extra-index-url" not in " ".join(runs), "a second index is a fallback to a CUDA build"
    check = commands.index(next(c for c in commands if "check_torch.py" in c))
    assert check > commands.index(torch_install)
    assert "TORCH_VARIANT" in commands[check]
    args = {rest.split("=")[0]: rest.partition("=")[2] for rest in _effective(stages, "torch", "ARG")}
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_INDEX_URL"].endswith("/whl/cpu")


@pytest.mark.parametrize("image", IMAGES)
def test_pypi_index_reaches_every_other_install(image: str) -> None:
    stages = _stages_of(image)
    builder_env = _env(stages, "builder")
    assert builder_env.get("PIP_INDEX_URL") == "${PYPI_INDEX_URL}", "pip reads PIP_INDEX_URL in every RUN"
    installs = [r for s in _chain(stages, "builder") for kw, r in s.instructions if kw == "RUN" and "pip install" in r]
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command and "TORCH_INDEX_URL" not in command:
                assert "--index-url" not in command and "-i " not in command, command


@pytest.mark.parametrize("stage, module", [("api", "service"), ("train", "training")])
def test_entrypoint_runs_the_package(stage: str, module: str) -> None:
    stages = _stages_of(stage)
    entrypoints = _effective(stages, stage, "ENTRYPOINT")
    assert entrypoints, f"{stage}: no ENTRYPOINT"
    assert entrypoints[-1].startswith("["), "exec form, so python is PID 1 and gets SIGTERM to drain"
    assert _exec_form(entrypoints[-1]) == ["python", "-m", module]
    assert (ROOT / module / "__init__.py").exists()


@pytest.mark.parametrize("stage", ["api", "train"])
def test_runs_as_a_non_root_user(stage: str) -> None:
    stages = _stages_of(stage)
    users = _effective(stages, stage, "USER")
    assert users, f"{stage}: no USER, the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{stage}: USER {user}"


def test_healthcheck_probes_readiness(stages: list[Stage]) -> None:
    checks = _effective(stages, "api", "HEALTHCHECK")
    assert checks, "api: no HEALTHCHECK"
    _, command = _split_flags(checks[-1])
    assert command.startswith("CMD ")
    argv = _exec_form(command[4:].strip())
    if READY_PATH not in " ".join(argv):
        # A probe script: it must be copied into the image from a file that probes READY_PATH.
        script = next(a for a in argv if a.endswith(".py"))
        sources = [srcs for s, flags, srcs, dest in _copies(stages) if dest == script and "from" not in flags]
        assert sources, f"{script} is not COPYed into the image"
        assert READY_PATH in (ROOT / sources[0][0]).read_text()
    assert "curl" not in argv and "wget" not in argv, "the slim base has neither"


def _flag_seconds(flags: dict[str, str], name: str) -> float:
    value = flags[name]
    return float(value[:-1]) if value.endswith("s") else float(value)


def test_healthcheck_turns_healthy_soon_after_ready(stages: list[Stage], compose: dict[str, Any]) -> None:
    """Docker runs the first probe one interval after start and then every interval: healthy is
    at most one interval (plus the probe) after ready. The target is 5 s."""
    flags, _ = _split_flags(_effective(stages, "api", "HEALTHCHECK")[-1])
    assert _flag_seconds(flags, "interval") + _flag_seconds(flags, "timeout") <= 6
    assert _flag_seconds(flags, "interval") <= 3
    check = compose["services"]["api"]["healthcheck"]
    assert _seconds(check["interval"]) == _flag_seconds(flags, "interval")
    assert _seconds(check["start_period"]) >= 30, "a slow first start is not counted as unhealthy"


def test_artifacts_volume_holds_the_default_model(stages: list[Stage]) -> None:
    env = _env(stages, "api")
    artifacts = env.get("HC_ARTIFACTS_DIR")
    assert artifacts == "/app/artifacts"
    volumes = [v for rest in _effective(stages, "api", "VOLUME") for v in _exec_form(rest)]
    assert artifacts in volumes
    copied = [dest.rstrip("/") for _, _, srcs, dest in _copies(stages) if {"artifacts", "artifacts/"} & set(srcs)]
    assert artifacts in copied, "the committed default model is copied in as the image's default"
    assert env.get("HC_HOST") == "0.0.0.0", "reachable from outside the container"
    # The train image carries the same default model in the same place: whichever image first
    # mounts a fresh named volume seeds it, so `run train` before `up` cannot hide the default.
    train = parse_dockerfile(TRAIN_DOCKERFILE)
    assert _env(train, "train").get("HC_ARTIFACTS_DIR") == artifacts
    train_copied = [dest.rstrip("/") for _, _, srcs, dest in _copies(train) if {"artifacts", "artifacts/"} & set(srcs)]
    assert train_copied == [artifacts]
    assert artifacts in [v for rest in _effective(train, "train", "VOLUME") for v in _exec_form(rest)]
    exposed = [p for rest in _effective(stages, "api", "EXPOSE") for p in rest.split()]
    assert env.get("HC_PORT") in exposed


def test_default_model_is_committed() -> None:
    """The image copies artifacts/ as its default model: there must be a valid version in it."""
    from contract.artifact import ArtifactError, resolve_version

    try:
        resolve_version(ROOT / "artifacts")
    except ArtifactError as exc:
        message = f"no default model for the image: {exc} (run `make default-model` and commit it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


# --- the probe script --------------------------------------------------------------------


def _load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "scripts" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def stub_server():
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", statuses
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, exit_code", [(200, 0), (503, 1), (500, 1)])
def test_healthcheck_script_exit_code(stub_server: tuple[str, dict[str, int]], status: int, exit_code: int) -> None:
    base, statuses = stub_server
    statuses[READY_PATH] = status
    healthcheck = _load_healthcheck()
    assert healthcheck.READY_PATH == READY_PATH
    assert healthcheck.main([base + READY_PATH]) == exit_code


def test_healthcheck_script_reads_hc_port(stub_server: tuple[str, dict[str, int]], monkeypatch) -> None:
    base, statuses = stub_server
    statuses[READY_PATH] = 200
    monkeypatch.setenv("HC_PORT", base.rsplit(":", 1)[1])
    assert _load_healthcheck().main([]) == 0
    statuses[READY_PATH] = 503
    assert _load_healthcheck().main([]) == 1


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _load_healthcheck().main([f"http://127.0.0.1:{port}{READY_PATH}"]) == 1


# --- docker-compose.yml ------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with every variable unset: what a fresh checkout runs."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw_compose)


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in env)}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert parts, f"not a compose duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out.append((source, target))
    return out


def test_compose_top_level(raw_compose: dict[str, Any]) -> None:
    assert "version" not in raw_compose, "the Compose Specification has no version key"
    assert set(raw_compose["services"]) == {"api", "train"}
    known = {"services", "volumes", "networks", "configs", "secrets"}
    assert all(k in known or k.startswith("x-") for k in raw_compose)


def test_compose_services_build_their_dockerfiles(compose: dict[str, Any]) -> None:
    for service, dockerfile in IMAGES.items():
        build = compose["services"][service]["build"]
        assert build["context"] == "."
        assert ROOT / build["dockerfile"] == dockerfile
        assert "target" not in build, "each Dockerfile's last stage is its image"
        args = {rest.split("=")[0] for rest in _effective(_stages_of(service), "builder", "ARG")}
        assert set(build.get("args", {})) == {"TORCH_INDEX_URL", "TORCH_VARIANT", "PYPI_INDEX_URL"} <= args


def test_compose_api_service(compose: dict[str, Any], stages: list[Stage]) -> None:
    api = compose["services"]["api"]
    env = _environment(api)
    assert "profiles" not in api, "`docker compose up` starts the API"
    assert api["restart"] == "unless-stopped"
    # Published port: one value for a single replica, a range (API_PORT=8000-8002) for --scale.
    (port,) = api["ports"]
    published, target = str(port).rsplit(":", 1)
    assert target == env["HC_PORT"] == _env(stages, "api")["HC_PORT"]
    raw_port = yaml.safe_load(COMPOSE.read_text())["services"]["api"]["ports"][0]
    assert raw_port.startswith("${API_PORT"), "the host side is configurable, so scaling can use a range"
    test = api["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    _, image_check = _split_flags(_effective(stages, "api", "HEALTHCHECK")[-1])
    assert READY_PATH in " ".join(test) or test[1:] == _exec_form(image_check.removeprefix("CMD").strip())
    # Torch threads fit the CPU limit (more only adds contention); the drain fits before SIGKILL.
    assert 1 <= int(env["HC_TORCH_THREADS"]) <= float(api["deploy"]["resources"]["limits"]["cpus"])
    assert _seconds(api["stop_grace_period"]) > float(env["HC_SHUTDOWN_TIMEOUT_S"])
    assert env["HC_ARTIFACTS_DIR"] == _env(stages, "api")["HC_ARTIFACTS_DIR"]
    assert ("artifacts", env["HC_ARTIFACTS_DIR"]) in _mounts(api)
    assert "HC_ADMIN_TOKEN" in env and env["HC_ADMIN_TOKEN"] is None, "token passed through, never written here"


def test_compose_train_service(compose: dict[str, Any]) -> None:
    train = compose["services"]["train"]
    api_env = _environment(compose["services"]["api"])
    assert train["profiles"] == ["train"], "only runs when asked for"
    command = [str(c) for c in train["command"]]
    assert command[command.index("--artifacts-dir") + 1] == api_env["HC_ARTIFACTS_DIR"]
    assert command[command.index("--data") + 1].startswith(("https://", "/"))
    # Same named volume: the API sees the new version after /admin/reload or a restart.
    assert _mounts(train) == _mounts(compose["services"]["api"])
    assert "artifacts" in compose["volumes"]


def test_compose_train_command_parses_with_the_training_cli(compose: dict[str, Any]) -> None:
    from training.config import TrainConfig

    config = TrainConfig.from_args([str(c) for c in compose["services"]["train"]["command"]])
    config.validate()
    assert config.artifacts_dir == "/app/artifacts"


def _settings_module() -> Any:
    import service.settings

    return service.settings


def test_hc_variables_are_settings_fields(compose: dict[str, Any], stages: list[Stage]) -> None:
    settings = _settings_module()
    assert settings.Settings.model_config.get("env_prefix") == ENV_PREFIX
    fields = set(settings.Settings.model_fields)
    names = set(_environment(compose["services"]["api"])) | set(_env(stages, "api"))
    hc_names = {n for n in names if n.startswith(ENV_PREFIX)}
    assert hc_names, "no HC_ settings found"
    unknown = sorted(n for n in hc_names if n[len(ENV_PREFIX) :].lower() not in fields)
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_compose_environment_validates_as_settings(
    compose: dict[str, Any], stages: list[Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_module()
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    env = {**_env(stages, "api"), **_environment(compose["services"]["api"])}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and value is not None:
            monkeypatch.setenv(name, value)
    loaded = settings.Settings()
    assert loaded.host == "0.0.0.0" and loaded.port == 8000
    assert str(loaded.artifacts_dir) == "/app/artifacts"
    assert loaded.admin_token is None


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    return commands


@pytest.mark.parametrize("api_port", [None, "8000-8002"], ids=["single", "port-range"])
def test_compose_config_validates_with_docker_compose(api_port: str | None) -> None:
    commands = _compose_commands()
    if not commands:
        reason = "neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)"
        if os.environ.get("CI") == "true":  # the suite's rule: missing tools skip locally, fail in CI
            pytest.fail(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in ("API_PORT", "COMPOSE_FILE", "COMPOSE_PROFILES")}
    if api_port:
        env["API_PORT"] = api_port
    for command in commands:
        for profile in ([], ["--profile", "train"]):
            if profile and command == ["docker-compose"]:
                continue  # 1.29's `config` always validates every service, profiles or not
            args = [*command, "-f", str(COMPOSE), *profile, "config", "-q"]
            result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr}"


# --- what the API image installs ---------------------------------------------------------


def _requirement_closure(dist: str, extras: set[str]) -> set[str]:
    """Normalized names of ``dist[extras]`` (as pyproject.toml declares it) and everything it
    requires, as installed here."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from scripts.requirements import requirements

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert canonicalize_name(project["name"]) == canonicalize_name(dist)
    seen: set[str] = {canonicalize_name(dist)}
    stack = [(r.name, frozenset(r.extras)) for r in map(Requirement, requirements(project, sorted(extras)))]
    while stack:
        name, wanted = stack.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            stack.append((req.name, frozenset(req.extras)))
    return seen


# Run in a fresh interpreter where the blocked top-level modules cannot be imported, as in the
# image where their distributions are not installed (libraries that try an optional import, like
# torch.hub with tqdm, then take their fallback path exactly as they will in the image).
_BLOCKED_IMPORT = """
import importlib, importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in the API image)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_service_imports_with_only_what_the_api_image_installs() -> None:
    from packaging.utils import canonicalize_name

    modules = ["service.settings", "service.api.app"]
    main = ROOT / "service" / "__main__.py"
    if main.exists() and 'if __name__ == "__main__"' in main.read_text():
        modules.append("service.__main__")
    # The image's venv: the project with its serve extra and their requirements, plus what
    # `python -m venv` puts there. Every other installed distribution is blocked.
    allowed = _requirement_closure("headline-classifier", {"serve"}) | {"pip", "setuptools", "wheel"}
    assert not allowed & {canonicalize_name(n) for n in ("scikit-learn", "nltk", "matplotlib", "tqdm")}
    owners = metadata.packages_distributions()
    blocked = {
        module
        for module, dists in owners.items()
        if module not in sys.stdlib_module_names and not any(canonicalize_name(d) in allowed for d in dists)
    }
    assert set(TRAIN_ONLY_MODULES) <= blocked

    args = [sys.executable, "-c", _BLOCKED_IMPORT, json.dumps(sorted(blocked)), *modules]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"the API does not import with only the serve extra installed:\n{result.stderr}"
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not imported & blocked
    assert {"service", "contract", "torch", "fastapi"} <= imported
    assert "training" not in imported
