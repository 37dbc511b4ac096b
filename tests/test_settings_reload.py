"""Settings hot reload: a real `kms-injector webhook` over HTTPS whose --settings file lives in a
directory laid out like a kubelet ConfigMap volume (`..data -> ..<ts>`, `settings.yaml ->
..data/settings.yaml`), updated by the same atomic `..data` rename kubelet does."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

from injector.log import Logger
from webhook.metrics import Metrics
from webhook.settings_reload import SettingsReloader

from .agent_support import write_volume
from .reliability_support import WebhookProcess

P = "kms.hanzo.ai/"
OTHER_HOST = "https://kms.other.example/api"
SETTINGS_A = "defaultPolicy: allow\n"  # OTHER_HOST is not allowed
SETTINGS_B = f"defaultPolicy: allow\nallowedHosts:\n  - {OTHER_HOST}\n"
BROKEN = f"defaultPolicy: sometimes\nallowedHosts:\n  - {OTHER_HOST}\n"


def write_configmap(directory: Path, files: dict[str, str]) -> None:
    """Update `directory` the way kubelet updates a ConfigMap volume."""
    write_volume(directory, files)


def admission(image: str = "ghcr.io/example/api:1") -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "api-5c9f7-", "namespace": "apps",
                        "annotations": {P + "path": "/api", P + "host": OTHER_HOST}},
           "spec": {"serviceAccountName": "api", "containers": [{"name": "api", "image": image}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "apps",
        "operation": "CREATE", "object": pod, "dryRun": False}}).encode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def poll(cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def test_configmap_update_takes_effect_and_broken_update_keeps_old(tmp_path: Path) -> None:
    cm = tmp_path / "etc-kms-injector"
    write_configmap(cm, {"settings.yaml": SETTINGS_A})
    w = WebhookProcess.start(tmp_path, "--settings", str(cm / "settings.yaml"))
    conn = w.connection()
    body = admission()

    def answer(b: bytes = body) -> dict:
        status, raw = w.post(conn, b)
        assert status == 200, raw[:300]
        return json.loads(raw)["response"]

    try:
        # A: the host is not allowed. Asked twice, the second answer comes from the cache.
        for _ in range(2):
            resp = answer()
            assert resp["allowed"] is False and OTHER_HOST in resp["status"]["message"], resp
        text = w.get("/metrics")[1]
        assert metric(text, 'kms_injector_review_cache_total{result="hit"}') >= 1
        assert metric(text, "kms_injector_settings_generation") == 1
        loaded_a = metric(text, "kms_injector_settings_loaded_timestamp_seconds")
        assert loaded_a > 0

        # B allows it: the very same request (which the cache answered) is now injected.
        write_configmap(cm, {"settings.yaml": SETTINGS_B})
        resp = poll(lambda: (r := answer())["allowed"] and r, "settings B to be served")
        assert "patch" in resp, resp
        text = w.get("/metrics")[1]
        assert metric(text, 'kms_injector_settings_reloads_total{result="ok"}') == 1
        assert metric(text, 'kms_injector_settings_reloads_total{result="error"}') == 0
        assert metric(text, "kms_injector_settings_generation") == 2
        assert metric(text, "kms_injector_settings_loaded_timestamp_seconds") >= loaded_a
        reloaded = [json.loads(line) for line in w.log().splitlines() if '"settings_reloaded"' in line]
        assert len(reloaded) == 1 and reloaded[0]["generation"] == 2 and len(reloaded[0]["digest"]) == 12, reloaded
        assert "kms.other.example" not in json.dumps(reloaded), "settings contents in the reload log"

        # Broken: still serving B, one error line naming the field, the metrics say so, still ready.
        write_configmap(cm, {"settings.yaml": BROKEN})
        text = poll(lambda: (t := w.get("/metrics")[1]) and
                    metric(t, 'kms_injector_settings_reloads_total{result="error"}') >= 1 and t, "the reload error")
        assert metric(text, 'kms_injector_settings_reloads_total{result="error"}') == 1
        assert metric(text, "kms_injector_settings_reload_failing") == 1
        assert metric(text, "kms_injector_settings_generation") == 2
        failed = [json.loads(line) for line in w.log().splitlines() if '"settings_reload_failed"' in line]
        assert len(failed) == 1 and failed[0]["level"] == "error" and failed[0]["field"] == "default_policy", failed
        assert w.get("/readyz")[0] == 200
        fresh = answer(admission(image="ghcr.io/example/api:2"))  # another spec: not cached, reviewed with the settings in use
        assert fresh["allowed"] is True and "patch" in fresh, fresh
        assert answer()["allowed"] is True

        # Back to A: refused again (the cache was cleared on this swap too), error cleared.
        write_configmap(cm, {"settings.yaml": SETTINGS_A})
        poll(lambda: answer()["allowed"] is False, "settings A to be served again")
        text = w.get("/metrics")[1]
        assert metric(text, "kms_injector_settings_generation") == 3
        assert metric(text, "kms_injector_settings_reload_failing") == 0
        assert metric(text, 'kms_injector_settings_reloads_total{result="error"}') == 1
    finally:
        conn.close()
        w.stop()
    assert "Traceback" not in w.log()


async def test_revert_to_served_settings_clears_the_error(tmp_path: Path) -> None:
    """In-process, real files and watcher: a broken edit reverted to the served bytes is no longer
    failing, and nothing is swapped (same settings, cache kept)."""
    import io

    cm = tmp_path / "cm"
    write_configmap(cm, {"settings.yaml": SETTINGS_B})
    metrics, swapped, stream = Metrics(), [], io.StringIO()
    r = SettingsReloader(cm / "settings.yaml", metrics=metrics, log=Logger("webhook.settings", stream=stream),
                         poll_interval=0.5, on_change=swapped.append)
    first = r.load_now()
    assert OTHER_HOST in first.allowed_hosts and r.generation == 1
    stop = asyncio.Event()
    task = asyncio.create_task(r.watch(stop))

    async def until(cond, what: str) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {stream.getvalue()[-1000:]}"
            await asyncio.sleep(0.05)

    try:
        write_configmap(cm, {"settings.yaml": BROKEN})
        await until(lambda: metrics.settings_reload_error == "default_policy", "the error")
        write_configmap(cm, {"settings.yaml": SETTINGS_B})
        await until(lambda: metrics.settings_reload_error is None, "the error to clear")
        assert swapped == [] and r.generation == 1 and metrics.settings_reloads == {"ok": 0, "error": 1}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
