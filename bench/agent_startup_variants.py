"""What each agent start-up choice pays: init exec-to-files and sidecar RSS of variants, interleaved.

A variant "+ X" runs the agent with X imported first, i.e. without that one choice (the TLS gate,
the built-in SHA-256, the argparse fast path); "--api infisical" skips the server detection
(`GET /status`) that the default `api: auto` does. `--old COMMIT` adds that commit's injector/ as a
baseline. Every variant is installed like the agent image (injector/ and h11 alone in a venv, compiled).
Prints a Markdown table for bench/README.md ("Agent start-up choices"); it writes nothing there.

    python bench/agent_startup_variants.py [--runs 30] [--old e891d11]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from agent_bench import CLIENT_ID, CLIENT_SECRET, ENV, OUT, PATH, PROJECT, ROOT, SECRETS, kms_cmd

# name -> (code run before the agent, extra agent arguments)
VARIANTS = {
    "after": ("", ()),
    "after + `ssl` imported (no TLS gate)": ("import ssl; ", ()),
    "after + `hashlib` imported": ("import hashlib; ", ()),
    "after + argparse's help formatter built": ("import argparse; argparse.HelpFormatter('x'); ", ()),
    "after, `--api infisical` (no server detection)": ("", ("--api", "infisical")),
}


def image_venv(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dst)], check=True)
    site = Path(glob.glob(str(dst / "lib" / "python*" / "site-packages"))[0])
    shutil.copytree(src / "injector", site / "injector", ignore=shutil.ignore_patterns("__pycache__"))
    import h11  # the agent's one dependency since the h11 framing; an older tree simply never imports it

    shutil.copytree(Path(h11.__file__).parent, site / "h11", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(dst / "bin" / "python"), "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                    str(site)], check=True)
    return dst / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--old", help="a commit whose injector/ is the baseline")
    args = p.parse_args(argv)
    work = OUT / "variants"
    shutil.rmtree(work, ignore_errors=True)
    (work / "auth").mkdir(parents=True)
    (work / "auth" / "clientId").write_text(CLIENT_ID)
    (work / "auth" / "clientSecret").write_text(CLIENT_SECRET)
    seed = {"identities": [{"name": "bench", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                            "access": [{"project": PROJECT, "environments": ["*"], "paths": ["/**"], "read": True}]}],
            "projects": {PROJECT: {"environments": {ENV: {"folders": {PATH: {"secrets": SECRETS}}}}}}}
    (work / "seed.json").write_text(json.dumps(seed))
    new_python = image_venv(ROOT, work / "venv-new")
    pythons = {name: (new_python, variant) for name, variant in VARIANTS.items()}
    if args.old:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "injector"], check=True, capture_output=True).stdout
            (Path(tmp) / "a.tar").write_bytes(archive)
            with tarfile.open(Path(tmp) / "a.tar") as tf:
                tf.extractall(tmp)
            pythons = {f"before ({args.old})": (image_venv(Path(tmp), work / "venv-old"), ("", ())), **pythons}
    dev = subprocess.Popen(kms_cmd("dev-server", "--seed", str(work / "seed.json"), "--port", "0"),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert dev.stdout is not None
        common = ["--host", dev.stdout.readline().strip(), "--project", PROJECT, "--env", ENV, "--path", PATH,
                  "--credentials-dir", str(work / "auth")]

        def argv_of(python: Path, variant: tuple[str, tuple[str, ...]], *rest: str) -> list[str]:
            # run with cwd=work: `-c` puts cwd on sys.path
            pre, extra = variant
            return [str(python), "-c", pre + "import sys; from injector.cli import main; sys.exit(main())", "agent", *rest,
                    *common, *extra]

        init: dict[str, list[float]] = {k: [] for k in pythons}
        for _ in range(args.runs):
            for name, (python, variant) in pythons.items():
                shutil.rmtree(work / "init", ignore_errors=True)
                t0 = time.perf_counter()
                rc = subprocess.run(argv_of(python, variant, "--mode", "init", "--mount-path", str(work / "init")),
                                    stderr=subprocess.DEVNULL, cwd=work).returncode
                init[name].append((time.perf_counter() - t0) * 1000)
                assert rc == 0 and (work / "init" / "KEY_7").exists(), name
        print("| variant | init median (ms) | init min (ms) | sidecar RSS (MiB) | OpenSSL mapped |")
        print("|---|---:|---:|---:|---|")
        for name, (python, variant) in pythons.items():
            shutil.rmtree(work / "side", ignore_errors=True)
            proc = subprocess.Popen(argv_of(python, variant, "--mode", "sidecar", "--refresh-interval", "5s",
                                            "--mount-path", str(work / "side")), stderr=subprocess.DEVNULL, cwd=work)
            try:
                time.sleep(13)  # two 5 s cycles: the sidecar's steady state
                rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 1024
                maps = Path(f"/proc/{proc.pid}/maps").read_text()
            finally:
                proc.terminate()
                proc.wait()
            libs = ", ".join(lib for lib in ("libssl", "libcrypto") if lib in maps) or "none"
            xs = init[name]
            print(f"| {name} | {statistics.median(xs):.1f} | {min(xs):.1f} | {rss:.1f} | {libs} |", flush=True)
    finally:
        dev.terminate()
        dev.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
