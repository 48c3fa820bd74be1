"""The Dockerfile, compose.yaml and the Prometheus / Grafana provisioning, checked as files (no
Docker needed; ``tests/test_docker.py`` builds and runs the image where a daemon is available):
the image installs ``.[serve]`` only, runs as a non-root user with its state dir as a volume, and
the compose file wires the service, MLflow, Prometheus and Grafana as docs/service.md says."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STATE = "/var/lib/adbandit"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_image_installs_the_serve_extra_only_and_it_exists() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [args for op, args in dockerfile() if op == "RUN" and "pip install" in args]
    targets = [m.group(1) for args in installs for m in re.finditer(r'pip install "?\.\[([^\]]+)\]"?', args)]
    assert targets == ["serve"], installs
    assert "serve" in extras and not any(dep.startswith(("ray", "mlflow")) for dep in extras["serve"])
    # Everything the package needs is copied in (its packages and the files pyproject names).
    copied = {
        src for op, args in dockerfile() if op == "COPY" and not args.startswith("--from") for src in args.split()[:-1]
    }
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    assert {"pyproject.toml", "README.md"} <= copied
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert not copied & set(ignored) and ".venv" in ignored and "state" in ignored


def test_the_image_is_slim_runs_as_a_non_root_user_with_the_state_dir_as_a_volume() -> None:
    steps = final_stage()
    args = dict(reversed(steps))  # the first of each instruction in the final stage
    assert "slim" in next(a for op, a in dockerfile() if op == "ARG" and a.startswith("PYTHON_IMAGE="))
    user = [a for op, a in steps if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), user
    volumes = json.loads(args["VOLUME"])
    assert volumes == [STATE]
    entry = json.loads(args["ENTRYPOINT"])
    assert entry[:2] == ["adbandit", "serve"] and entry[entry.index("--state-dir") + 1] == STATE
    assert entry[entry.index("--host") + 1] == "0.0.0.0" and entry[entry.index("--port") + 1] == "8000"
    assert args["EXPOSE"] == "8000"
    assert "/healthz" in args["HEALTHCHECK"]
    # No build tools or the source tree in the final image: only the venv is copied from the build.
    assert [a for op, a in steps if op == "COPY"] == ["--from=build /opt/adbandit /opt/adbandit"]
    assert any(op == "RUN" and "useradd" in a and "chown adbandit" in a for op, a in steps)


def test_compose_runs_the_service_mlflow_prometheus_and_grafana(compose) -> None:
    services = compose["services"]
    assert set(services) == {"adbandit", "mlflow", "prometheus", "grafana"}
    service = services["adbandit"]
    assert service["build"] == "." and "8000:8000" in service["ports"]
    assert any(v.endswith(f":{STATE}") and not v.startswith((".", "/")) for v in service["volumes"])  # named volume
    assert "5000:5000" in services["mlflow"]["ports"] and "mlflow server" in services["mlflow"]["command"]
    assert "9090:9090" in services["prometheus"]["ports"] and "3000:3000" in services["grafana"]["ports"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", ()) if not v.startswith(".")}
    assert named == set(compose["volumes"])
    for name, spec in services.items():  # every image is pinned to a version
        if "image" in spec and name != "adbandit":
            assert re.search(r":v?\d+\.\d+", spec["image"]), spec["image"]
    # Every file mounted from the repository exists.
    for spec in services.values():
        for volume in spec.get("volumes", ()):
            if volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), volume


def test_prometheus_scrapes_the_service_and_grafana_gets_it_and_the_dashboard(compose) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["adbandit:8000"]
    command = shlex.split(compose["services"]["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command

    grafana = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/adbandit.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = [ROOT / host for container, host in grafana.items() if container.startswith(folder + "/")]
    assert dashboards == [ROOT / "docs/grafana/adbandit.json"]
    board = json.loads(dashboards[0].read_text())
    # The dashboard's data source is a variable of type prometheus: the provisioned one fills it.
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    assert exprs and all("adbandit_" in e for e in exprs)
