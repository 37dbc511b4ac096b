"""`kms-injector dev-server`: serve a seeded dev KMS until SIGTERM/SIGINT.

The first (and only) line on stdout is the base URL, e.g. `http://127.0.0.1:8200/api`; logs and
audit lines go to stderr (or --audit-log FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from injector.log import get_logger

DEFAULT_SEED = "examples/dev-kms.yaml"


def _nonneg(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kms-injector dev-server",
                                description="A local KMS speaking the Hanzo KMS (Infisical-compatible) API. Dev only.")
    from .profiles import DEFAULT_PROFILE, PROFILES

    p.add_argument("--profile", choices=list(PROFILES), default=DEFAULT_PROFILE,
                   help="which real KMS server to model (default dev, the project's own model): "
                        + "; ".join(f"{n}: {pr.summary}" for n, pr in PROFILES.items()))
    p.add_argument("--seed", default=DEFAULT_SEED, help=f"YAML seed: identities and projects (default {DEFAULT_SEED})")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=_nonneg(int), default=8200, help="port (default 8200; 0 picks a free one)")
    p.add_argument("--token-ttl", type=_nonneg(float), default=7200, help="access token TTL in seconds (default 7200)")
    p.add_argument("--max-ttl", type=_nonneg(float), default=2592000,
                   help="access token max TTL in seconds; renewing past it gives 401 (default 2592000; 0 = none)")
    p.add_argument("--rate-limit", type=_nonneg(float), default=0,
                   help="requests per second per identity before 429 + Retry-After (default 0 = off)")
    p.add_argument("--lockout-seconds", type=_nonneg(float), default=None,
                   help="how long an identity is locked after 3 wrong logins (default: the profile's; dev 30, "
                        "hanzo-node and infisical-events 300)")
    p.add_argument("--api", choices=("infisical", "canonical", "both"), default=None,
                   help="dev profile only, legacy: infisical (default), canonical (the old dev /api/v1/kms/orgs routes), "
                        "or both; the real canonical surfaces are --profile canonical|canonical-older|canonical-nolist")
    p.add_argument("--audit-log", metavar="FILE", help="append audit JSON lines here instead of stderr")
    p.add_argument("--test-hooks", action="store_true", help="serve /api/_dev/stats and /api/_dev/faults (tests only)")
    p.add_argument("--no-events", action="store_true", help="disable the change-event stream (it then answers 404)")
    p.add_argument("--max-event-streams", type=_nonneg(int), default=None,
                   help="open event streams per identity (infisical-events: per project and identity) before 429 "
                        "(default 10; infisical-events 5)")
    p.add_argument("--events-not-on-plan", action="store_true",
                   help="infisical-events: subscribing answers 400 (event subscriptions not on the plan)")
    p.add_argument("--events-forbidden", action="store_true",
                   help="infisical-events: subscribing answers 403 (no secret-events permission)")
    p.add_argument("--event-heartbeat", type=_nonneg(float), default=15.0,
                   help="infisical-events: seconds between `event: ping` heartbeats (default 15)")
    p.add_argument("--event-max-seconds", type=_nonneg(float), default=3600.0,
                   help="infisical-events: the server closes each stream after this long (default 3600)")
    p.add_argument("--k8s-jwt-public-key", metavar="FILE",
                   help="PEM public key that signs service-account JWTs accepted by kubernetes-auth login")
    p.add_argument("--k8s-audience", help="audience kubernetes-auth JWTs must carry (default: from the seed, else not checked)")
    return p


async def serve(args: argparse.Namespace) -> int:
    from .audit import AuditLog
    from .server import DevKmsServer
    from .state import DevKms

    log = get_logger("dev-kms")
    pem = None
    if args.k8s_jwt_public_key:
        try:
            pem = Path(args.k8s_jwt_public_key).read_text()
        except OSError as exc:
            print(f"kms-injector dev-server: cannot read --k8s-jwt-public-key {args.k8s_jwt_public_key}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    if args.api in ("canonical", "both") and args.profile != "dev":
        print(f"kms-injector dev-server: --api {args.api} applies to --profile dev only; the real canonical surfaces "
              "are --profile canonical, canonical-older or canonical-nolist", file=sys.stderr)
        return 2
    state = DevKms(args.seed, token_ttl=args.token_ttl, max_ttl=args.max_ttl, rate_limit=args.rate_limit,
                   lockout_seconds=args.lockout_seconds, events=not args.no_events,
                   max_event_streams=args.max_event_streams, k8s_public_key_pem=pem, k8s_audience=args.k8s_audience,
                   profile=args.profile, events_on_plan=not args.events_not_on_plan,
                   events_permitted=not args.events_forbidden, event_heartbeat=args.event_heartbeat or 15.0,
                   event_max_seconds=args.event_max_seconds or 3600.0)
    audit = AuditLog(args.audit_log) if args.audit_log else AuditLog()
    server = DevKmsServer(state, host=args.host, port=args.port, test_hooks=args.test_hooks, audit=audit, api=args.api)
    try:
        await server.start()
    except OSError as exc:
        print(f"kms-injector dev-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sys.stdout.write(server.base_url + "\n")
    sys.stdout.flush()
    log.info("started", url=server.base_url, seed=str(args.seed), projects=sorted(state.projects),
             identities=sorted(state.identities), token_ttl=args.token_ttl, max_ttl=args.max_ttl,
             rate_limit=args.rate_limit, api=args.api or "infisical", profile=args.profile, test_hooks=args.test_hooks,
             events=state.events_enabled)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        audit.close()
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .seed import SeedError

    try:
        return asyncio.run(serve(args))
    except SeedError as exc:
        print(f"kms-injector dev-server: bad seed {args.seed}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
