"""Hot-loop cost of the webhook's per-admission work, one source tree against another.

    .venv/bin/python bench/review_hotloop.py [--tree DIR ...] [--runs 5] [--profile]

For each tree (default: this checkout) a fresh interpreter imports that tree's `webhook` and
times, on webhook_bench's realistic pod (unique pod: a fresh image tag per call so nothing
repeats), best of 9 x N calls of: `review()` alone, the cache key, and what the server does on
a miss (key + review). Trees are run interleaved, `--runs` times, and medians are printed; a
ratio is taken within a run. `--profile` prints a cProfile of `review()` for each tree instead.
Only the public names both trees share are used (webhook.mutate.review, webhook.review_key).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(n: int, profile: bool) -> None:
    import copy
    import time

    sys.path.insert(0, str(ROOT / "bench"))
    from webhook_bench import realistic_review  # the same pod as the server benchmark

    sys.path[:] = [os.getcwd()] + [x for x in sys.path if x not in (str(ROOT), os.getcwd())]  # the tree measured

    import webhook

    assert Path(webhook.__file__).resolve().parent.parent == Path.cwd().resolve(), webhook.__file__
    from webhook.mutate import review
    from webhook.review_key import review_key
    from webhook.settings import Settings

    settings = Settings()
    base = realistic_review()
    docs = []
    for i in range(64):  # unique pods: a different image tag each
        d = copy.deepcopy(base)
        d["request"]["object"]["spec"]["containers"][0]["image"] = f"ghcr.io/hanzoai/chat:{i:010x}"
        d["request"]["uid"] = f"uid-{i}"
        docs.append(d)
    assert review(docs[0], settings).decision == "injected"
    try:  # the server's one-extraction path, where this tree has it
        from webhook.review_input import review_input
        from webhook.review_key import input_key
        import inspect
        with_input = "inp" in inspect.signature(review).parameters
    except ImportError:
        review_input = input_key = None  # type: ignore[assignment]
        with_input = False

    if profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(50):
            for d in docs:
                review(d, settings)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return

    def best(fn) -> float:
        out = []
        for _ in range(9):
            t = time.perf_counter()
            for k in range(n):
                fn(docs[k & 63])
            out.append((time.perf_counter() - t) / n * 1e6)
        return min(out)

    def miss_old(d):  # what server.py did on a miss before: the key, then review() (which extracts again)
        review_key(d, 256 << 10)
        review(d, settings)

    res = {"review_us": best(lambda d: review(d, settings)),
           "key_us": best(lambda d: review_key(d, 256 << 10)),
           "miss_two_extractions_us": best(miss_old)}
    if with_input:
        def miss_new(d):  # server.py now: extract once, key and review from that input
            inp = review_input(d)
            input_key(inp, 256 << 10)
            review(d, settings, inp=inp)
        res["miss_one_extraction_us"] = best(miss_new)
    print(json.dumps(res))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", help="source tree to measure (repeatable); default: this checkout")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("-n", type=int, default=10000, help="calls per timing")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.n, args.profile)
        return 0
    trees = [Path(t).resolve() for t in (args.tree or [str(ROOT)])]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "-n", str(args.n)]
    if args.profile:
        for t in trees:
            print(f"== {t}", flush=True)
            subprocess.run([*cmd, "--profile"], cwd=t, env=env, check=True)
        return 0
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    for r in range(args.runs):
        for t in trees:
            out = subprocess.run(cmd, cwd=t, env=env, check=True, capture_output=True, text=True).stdout
            runs[t].append(json.loads(out.strip().splitlines()[-1]))
        print(f"run {r + 1}: " + " | ".join(f"{t.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[t][-1].items())
                                            for t in trees), flush=True)
    for t in trees:
        keys = runs[t][0].keys()
        print(f"{t}: median " + ", ".join(f"{k} {statistics.median(x[k] for x in runs[t]):.1f}" for k in keys))
    if len(trees) > 1:
        a = trees[0]
        for t in trees[1:]:
            ratio = statistics.median(x["review_us"] / y["review_us"] for x, y in zip(runs[t], runs[a]))
            print(f"review() {t.name} / {a.name}: median of per-run ratios {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
