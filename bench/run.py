"""`make bench`: run every bench module (bench/*_bench.py), each writing its own section of
bench/README.md. Run one alone with `python bench/run.py agent` (or `python bench/agent_bench.py`).
A module provides `main(argv: list[str]) -> int`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    names = sorted(p.stem for p in HERE.glob("*_bench.py"))
    wanted = [n for n in names if not argv or n.removesuffix("_bench") in argv or n in argv]
    failed = []
    for name in wanted:
        print(f"== {name}", flush=True)
        try:
            rc = int(importlib.import_module(name).main([]) or 0)
        except Exception as exc:  # one broken bench must not hide the others' results
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
