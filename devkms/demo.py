"""`kms-injector demo` (`make demo`): one rotation end to end, narrated, in about 20 seconds.

dev KMS (subprocess, port 0) -> agent in init mode writes the files -> example app reads them ->
agent in sidecar mode (refresh 5 s, SIGHUP to the app by name) -> a secret is rotated through the
dev KMS's HTTP API -> the `..data` symlink swaps to a new version -> the app reloads. Then the
change relay (devkms/demo_relay.py): `kms-injector relay`, two agents on two folders with a 60 s
poll, and a rotation that reaches the right one in about the relay's 2 s poll. Everything it
starts is stopped again, also on Ctrl-C or an error. Values are never printed, only key names
and hashes.

The steps run in order from `STEPS`; a later step (e.g. `kms-injector inject`) is added by
appending a function `step(demo: Demo) -> None` to `STEPS`; it may use `demo.say`, `demo.spawn`
(stopped automatically), `demo.workdir` and the fields the earlier steps filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets as _secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = ROOT / "examples" / "dev-kms.yaml"
APP = ROOT / "examples" / "app.py"
APP_NAME = "kms-demo-app"
REFRESH = "5s"
# The dev KMS profile closest to what the platform runs: Hanzo's Infisical fork behind
# http://kms.hanzo.svc.cluster.local/api (reference/kms-service-integration.txt). Its events route
# refuses the upstream body (422), so the sidecar delivers the rotation by its refresh.
PROFILE = "hanzo-node"
WAIT = 30.0  # generous deadlines: the demo also runs on a busy CI machine


class DemoError(Exception):
    pass


@dataclass
class Proc:
    """A child process whose stdout lines are collected by a thread."""

    name: str
    popen: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                self.lines.put(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()

    def wait_line(self, pattern: str, timeout: float = WAIT) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(f"{self.name}: no output matching {pattern!r} within {timeout:g}s")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    raise DemoError(f"{self.name} exited with code {self.popen.returncode}")
                continue
            self.seen.append(line)
            if rx.search(line):
                return line


@dataclass
class Demo:
    workdir: Path
    seed: Path
    out: Callable[[str], None] = print
    procs: list[Proc] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # in-process helpers, closed after procs
    # filled in by the steps
    base_url: str = ""
    project: str = ""
    env: str = ""
    path: str = ""
    rotate_key: str = ""
    writer_identity: tuple[str, str] = ("", "")
    app: Proc | None = None
    sidecar: Proc | None = None

    @property
    def secrets_dir(self) -> Path:
        return self.workdir / "secrets"

    @property
    def auth_dir(self) -> Path:
        return self.workdir / "auth"

    def say(self, text: str) -> None:
        self.out(text)

    def spawn(self, name: str, argv: list[str], *, stdout_to: Path | None = None, stderr_to: Path | None = None,
              env: dict[str, str] | None = None) -> Proc:
        stdout = open(stdout_to, "w") if stdout_to else subprocess.PIPE
        stderr = open(stderr_to, "w") if stderr_to else subprocess.DEVNULL
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        # Ctrl-C/SIGTERM are held back until the child is on the list, so clean-up always finds
        # it. (Not with a blocked signal mask: the child would inherit it and ignore SIGTERM.)
        pending: list[int] = []
        saved = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            popen = subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True, env=env, cwd=str(ROOT))
            proc = Proc(name, popen)
            self.procs.append(proc)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt
        if not stdout_to:
            proc.start_reader()
        return proc

    def agent_argv(self, mode: str) -> list[str]:
        return [sys.executable, "-m", "injector", "agent", "--mode", mode, "--host", self.base_url,
                "--project", self.project, "--env", self.env, "--path", self.path,
                "--mount-path", str(self.secrets_dir), "--credentials-dir", str(self.auth_dir),
                "--refresh-interval", REFRESH, "--signal", "SIGHUP", "--signal-process", APP_NAME]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        for close in reversed(self.cleanups):
            try:
                close()
            except Exception:  # clean-up goes on: the processes are stopped already
                pass

    # -- HTTP against the dev KMS (stdlib, like the agent) -------------------------------------
    def api(self, method: str, path: str, body: dict | None = None, token: str = "") -> dict:
        req = urllib.request.Request(self.base_url.rstrip("/") + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", "")
            except ValueError:
                message = ""
            raise DemoError(f"{method} {path}: HTTP {exc.code} {message}") from None

    def login(self, client_id: str, client_secret: str) -> str:
        return self.api("POST", "/v1/auth/universal-auth/login", {"clientId": client_id, "clientSecret": client_secret})["accessToken"]


# -- seed reading (which identity, project, folder and key the demo uses) ------------------------

def choose_from_seed(seed: Path) -> dict:
    import yaml

    data = yaml.safe_load(seed.read_text()) or {}
    idents = data.get("identities") or []
    projects = data.get("projects") or {}
    if not idents or not projects:
        raise DemoError(f"{seed}: needs identities and projects")
    project = "secrets-639-c" if "secrets-639-c" in projects else next(iter(projects))
    envs = projects[project].get("environments") or {}
    env = "prod" if "prod" in envs else next(iter(envs))
    folders = (envs[env] or {}).get("folders") or {}
    with_secrets = [p for p, f in folders.items() if (f or {}).get("secrets")]
    if not with_secrets:
        raise DemoError(f"{seed}: project {project} env {env} has no folder with secrets")
    path = "/chat" if "/chat" in with_secrets else with_secrets[0]
    keys = sorted((folders[path] or {})["secrets"])

    def rules(i: dict) -> list[dict]:
        return [r for r in (i.get("access") or []) if r.get("project") in ("*", project)]

    reader = next((i for i in idents if any(r.get("read", True) for r in rules(i))), idents[0])
    writer = next((i for i in idents if any(r.get("write") for r in rules(i))), reader)
    return {
        "project": project, "env": env, "path": path,
        "key": "API_KEY" if "API_KEY" in keys else keys[0],
        "reader": (reader["clientId"], reader["clientSecret"]),
        "writer": (writer["clientId"], writer["clientSecret"]),
    }


def list_version(secrets_dir: Path) -> str:
    try:
        return os.readlink(secrets_dir / "..data")
    except OSError:
        return "(none)"


def show_files(demo: Demo, indent: str = "      ") -> None:
    d = demo.secrets_dir
    for name in sorted(os.listdir(d)):
        p = d / name
        if p.is_symlink():
            target = os.readlink(p)
            if name == "..data":
                demo.say(f"{indent}{name} -> {target}")
            else:
                st = p.stat()
                demo.say(f"{indent}{name} -> {target}  ({st.st_mode & 0o777:04o}, {st.st_size} bytes)")
        elif name.startswith(".."):
            demo.say(f"{indent}{name}/  (the current version)")


# -- steps -----------------------------------------------------------------------------------------

def step_dev_kms(demo: Demo) -> None:
    choice = choose_from_seed(demo.seed)
    demo.project, demo.env, demo.path, demo.rotate_key = choice["project"], choice["env"], choice["path"], choice["key"]
    demo.writer_identity = choice["writer"]
    demo.auth_dir.mkdir(parents=True)
    (demo.auth_dir / "clientId").write_text(choice["reader"][0])
    (demo.auth_dir / "clientSecret").write_text(choice["reader"][1])
    os.chmod(demo.auth_dir / "clientSecret", 0o600)
    dev = demo.spawn("dev KMS", [sys.executable, "-m", "injector", "dev-server", "--seed", str(demo.seed), "--port", "0",
                                      "--profile", PROFILE],
                     stderr_to=demo.workdir / "dev-kms.log")
    demo.base_url = dev.wait_line(r"^https?://").strip()
    demo.say(f"[1] dev KMS listening on {demo.base_url} (seed {_rel(demo.seed)}, profile {PROFILE})")
    demo.say(f"    machine identity credentials written to {_rel(demo.auth_dir)}/clientId, clientSecret")


def step_init(demo: Demo) -> None:
    t0 = time.monotonic()
    rc = subprocess.run(demo.agent_argv("init"), cwd=str(ROOT), stdout=subprocess.DEVNULL,
                        stderr=open(demo.workdir / "agent-init.log", "w"), timeout=WAIT).returncode
    ms = (time.monotonic() - t0) * 1000
    if rc != 0:
        tail = (demo.workdir / "agent-init.log").read_text().strip().splitlines()[-1:]
        raise DemoError(f"init agent exited {rc}: {' '.join(tail)}")
    demo.say(f"[2] agent --mode init: {demo.project}/{demo.env}{demo.path} -> {_rel(demo.secrets_dir)} "
             f"in {ms:.0f} ms (exit 0), like the pod's kms-agent-init container:")
    show_files(demo)


def step_app(demo: Demo) -> None:
    demo.app = demo.spawn("app", [sys.executable, str(APP), str(demo.secrets_dir)])
    line = demo.app.wait_line(r"^app: loaded ")
    demo.say(f"[3] example app started (pid {demo.app.popen.pid}, process name {APP_NAME}):")
    demo.say(f"      {line}")


def step_sidecar(demo: Demo) -> None:
    log = demo.workdir / "agent-sidecar.log"
    demo.sidecar = demo.spawn("sidecar agent", demo.agent_argv("sidecar"), stdout_to=demo.workdir / "agent-sidecar.out", stderr_to=log)
    _wait_log(log, '"event":"first_sync"', demo.sidecar)
    changed = '"changed":true' in _find_log(log, '"event":"first_sync"')
    demo.say(f"[4] agent --mode sidecar: KMS change events where the server serves them, else a refresh every {REFRESH}, "
             f"SIGHUP to {APP_NAME} after a change; "
             f"first sync {'changed files' if changed else 'found the same content: no write, no signal'}")


def step_rotate(demo: Demo) -> None:
    before = list_version(demo.secrets_dir)
    token = demo.login(*demo.writer_identity)
    new_value = "rotated-" + _secrets.token_hex(12)  # never printed
    t0 = time.monotonic()
    demo.api("PATCH", f"/v3/secrets/raw/{demo.rotate_key}", {
        "workspaceSlug": demo.project, "projectSlug": demo.project, "environment": demo.env,
        "secretPath": demo.path, "secretValue": new_value, "type": "shared"}, token=token)
    demo.say(f"[5] rotated {demo.rotate_key} in KMS: PATCH /v3/secrets/raw/{demo.rotate_key} (new value not shown)")
    assert demo.app is not None
    line = demo.app.wait_line(r"^app: reload #\d+ on SIGHUP")
    took = time.monotonic() - t0
    after = list_version(demo.secrets_dir)
    with open(demo.secrets_dir / demo.rotate_key) as fh:
        if fh.read() != new_value:
            raise DemoError(f"{demo.rotate_key} on disk is not the rotated value")
    demo.say(f"      ..data: {before} -> {after}  (swapped by rename(2), {took * 1000:.0f} ms after the change)")
    demo.say(f"      {line}")


def step_inject(demo: Demo) -> None:
    """What the webhook does to a pod, shown offline with the same mutation code."""
    import yaml

    manifest = ROOT / "examples" / "chat-deployment.yaml"
    # A subprocess, not an import: `injector` never imports `webhook`.
    done = subprocess.run([sys.executable, "-m", "injector", "inject", "-f", str(manifest)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=WAIT)
    if done.returncode != 0:
        raise DemoError(f"kms-injector inject exited {done.returncode}: {done.stderr.strip()[-300:]}")
    (demo.workdir / "chat-deployment.injected.yaml").write_text(done.stdout)
    pod = next(d for d in yaml.safe_load_all(done.stdout) if d)["spec"]["template"]
    spec = pod["spec"]
    app = next(c for c in spec["containers"] if c["name"] == "chat")
    mount = next(m for m in app.get("volumeMounts", []) if m["name"] == "kms-secrets")
    demo.say(f"[6] kms-injector inject -f {_rel(manifest)}  (the webhook's mutation, offline):")
    demo.say(f"      initContainers: {', '.join(c['name'] for c in spec.get('initContainers', []))}")
    demo.say(f"      containers:     {', '.join(c['name'] for c in spec['containers'])}")
    demo.say(f"      volumes:        {', '.join(v['name'] for v in spec.get('volumes', []))}")
    demo.say(f"      chat mounts kms-secrets at {mount['mountPath']} (readOnly: {mount.get('readOnly', False)}); "
             f"shareProcessNamespace: {spec.get('shareProcessNamespace', False)}")
    demo.say(f"      annotation kms.hanzo.ai/status: {pod['metadata']['annotations'].get('kms.hanzo.ai/status')}"
             f"  (full output: {_rel(demo.workdir / 'chat-deployment.injected.yaml')})")


def step_relay(demo: Demo) -> None:
    from devkms.demo_relay import step_relay as run

    run(demo)


STEPS: list[Callable[[Demo], None]] = [step_dev_kms, step_init, step_app, step_sidecar, step_rotate, step_inject, step_relay]


def _find_log(path: Path, needle: str) -> str:
    try:
        for line in path.read_text().splitlines():
            if needle in line:
                return line
    except OSError:
        pass
    return ""


def _wait_log(path: Path, needle: str, proc: Proc, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not _find_log(path, needle):
        if proc.popen.poll() is not None:
            raise DemoError(f"{proc.name} exited with code {proc.popen.returncode}; see {_rel(path)}")
        if time.monotonic() > deadline:
            raise DemoError(f"{proc.name}: {needle} not logged within {timeout:g}s; see {_rel(path)}")
        time.sleep(0.05)


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kms-injector demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="demo-run", help="scratch folder, emptied at start (default ./demo-run)")
    p.add_argument("--seed", default=str(DEFAULT_SEED), help="dev KMS seed (default examples/dev-kms.yaml)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    demo = Demo(workdir=workdir, seed=Path(args.seed).resolve())

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must stop the demo even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell, e.g. `make test &` in a script): Python keeps an inherited SIG_IGN,
    # and the demo then ran to its end and exited 0 (the flake in test_demo_interrupted_...).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    print("kms-injector demo: KMS -> files -> app, and a rotation without a restart\n", flush=True)
    try:
        for step in STEPS:
            step(demo)
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what the demo started", file=sys.stderr)
        return 130
    except (DemoError, OSError, subprocess.SubprocessError) as exc:
        print(f"demo failed: {exc} (logs in {_rel(workdir)})", file=sys.stderr)
        return 1
    finally:
        demo.stop_all()
    if demo.sidecar is not None:
        print(f"[8] stopped sidecar (exit {demo.sidecar.popen.returncode}), relay, relay agents, app and dev KMS", flush=True)
    print(f"\ndone in {time.monotonic() - t0:.1f}s; logs in {_rel(workdir)}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
