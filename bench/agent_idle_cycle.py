"""Where the agent's idle-cycle CPU goes (bench/README.md "Agent: CPU per idle cycle").

In-process: N no-change cycles (_attempt + a zero pause) of the real agent loop against a dev KMS subprocess."""
import asyncio, cProfile, json, os, pstats, shutil, subprocess, sys, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# usage: python bench/agent_idle_cycle.py [N] [--profile]
from injector.agent_cli import load_config
from injector.log import get_logger
from injector.supervisor import Supervisor
from injector.agent_process import build_loop

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PROFILE = "--profile" in sys.argv
work = Path(__file__).resolve().parent / "out" / "idle-cycle"; shutil.rmtree(work, ignore_errors=True); (work / "auth").mkdir(parents=True)
(work/"auth"/"clientId").write_text("bench-client"); (work/"auth"/"clientSecret").write_text("bench-client-secret")
seed = {"identities": [{"name": "bench", "clientId": "bench-client", "clientSecret": "bench-client-secret",
        "access": [{"project": "bench", "environments": ["*"], "paths": ["/**"], "read": True}]}],
        "projects": {"bench": {"environments": {"prod": {"folders": {"/app": {"secrets": {f"KEY_{i}": f"v{i}"*8 for i in range(8)}}}}}}}}
(work/"seed.json").write_text(json.dumps(seed))
dev = subprocess.Popen([sys.executable, "-m", "injector", "dev-server", "--seed", str(work/"seed.json"), "--port", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
base = dev.stdout.readline().strip()
try:
    cfg = load_config(["--mode", "sidecar", "--host", base, "--project", "bench", "--env", "prod", "--path", "/app",
                       "--mount-path", str(work/"secrets"), "--credentials-dir", str(work/"auth"), "--refresh-interval", "5s"], {})
    log = get_logger("agent")
    async def main():
        loop = build_loop(cfg, log, Supervisor(log))
        for _ in range(3):
            loop._hold(); await loop._attempt(); await loop._pause(0.0)
        prof = cProfile.Profile() if PROFILE else None
        samples = []
        if prof: prof.enable()
        t0 = time.process_time()
        for _ in range(N):
            s = time.process_time()
            loop._hold(); await loop._attempt(); loop.metrics; await loop._pause(0.0)
            samples.append(time.process_time() - s)
        total = time.process_time() - t0
        if prof:
            prof.disable(); pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        import statistics
        print(f"cycles={N} cpu/cycle mean={total/N*1e3:.3f} ms median={statistics.median(samples)*1e3:.3f} ms")
        await loop.client.close()
    asyncio.run(main())
finally:
    dev.terminate(); dev.wait()
