"""Server profiles: which real KMS server the dev KMS models (shared/kms-api.md, fixtures/kms/).

A profile is plain data; api.py, infisical.py and canonical.py read it to pick routes, status
codes, messages and framing. `dev` is the project's own model (the default the tests were written
against); every other profile models one real server as recorded or as its source shows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    # Infisical-compatible API under /api: None (not served), "dev" (our model), "recorded" (upstream
    # Oct 2024, the fixtures), "newer" (Hanzo's fork and newer upstream: reqId, 422, lockout, ...)
    infisical: str | None = "dev"
    # canonical API: None, "legacy" (the dev model's old /api/v1/kms/orgs/... routes), "current"
    # (host-root /v1/kms/secrets...), "older" (/v1/kms/orgs/{org}/secrets...), "nolist" (current, no list route)
    canonical: str | None = None
    # change events: "dev" (our model: glob paths, `: ping` comments), "absent" (route missing: 404),
    # "stub" (Hanzo's fork: the route exists, the upstream body gets 422), "upstream" (the real stream)
    events: str = "dev"
    lockout: bool = True
    lockout_seconds: float = 30.0        # dev: 3 failures in a row; newer: 3 within lockout_window
    lockout_window: float | None = None
    unknown_project_status: int = 404    # recorded: 500 "Failed to find project by slug"
    view_secret_value: bool = True       # honour viewSecretValue=false (newer servers only)

    @property
    def real(self) -> bool:
        return self.infisical in ("recorded", "newer") or self.canonical in ("current", "older", "nolist")

    @property
    def validation_status(self) -> int:
        return 401 if self.infisical == "recorded" else 422


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("dev", "the project's own model of kms-api.md's Infisical API (events with path globs, lockout "
                   "3-in-a-row, descriptive messages); what the tests use by default"),
    Profile("infisical-recorded", "upstream Infisical, Oct 2024, exactly as tests/fixtures/kms/ recorded it: no "
                                  "events route, no lockout, validation as 401, rate limit as a 500 with Retry-After",
            infisical="recorded", events="absent", lockout=False, unknown_project_status=500, view_secret_value=False),
    Profile("hanzo-node", "Hanzo's Infisical fork (the platform's in-cluster KMS): lockout (3 failures in 30 s -> 300 s), "
                          "validation 422, an events route that answers 422 to the upstream body",
            infisical="newer", events="stub", lockout_seconds=300.0, lockout_window=30.0),
    Profile("infisical-events", "a newer upstream Infisical with change events: 1..10 registrations, prefix paths, "
                                "`event: ping`, one-hour close, 5 streams per (project, identity)",
            infisical="newer", events="upstream", lockout_seconds=300.0, lockout_window=30.0),
    Profile("canonical", "Hanzo's Go KMS, current surface: host-root /v1/kms/..., org from the token",
            infisical=None, canonical="current", events="absent"),
    Profile("canonical-older", "Hanzo's Go KMS, older surface: /v1/kms/orgs/{org}/secrets..., versions, prefix list",
            infisical=None, canonical="older", events="absent"),
    Profile("canonical-nolist", "Hanzo's Go KMS, current surface without a list route (keys come from configuration)",
            infisical=None, canonical="nolist", events="absent"),
)}

DEFAULT_PROFILE = "dev"


def get_profile(name: str | Profile = DEFAULT_PROFILE, *, api: str | None = None, events: bool | None = None) -> Profile:
    """The named profile, with the legacy switches applied: api="canonical"/"both" adds the dev
    model's old canonical routes to the `dev` profile (api="canonical" drops its Infisical routes);
    events=False makes the events route answer 404 in any profile."""
    p = name if isinstance(name, Profile) else PROFILES.get(name)
    if p is None:
        raise ValueError(f"unknown dev KMS profile {name!r}; accepted: {', '.join(PROFILES)}")
    if api not in (None, "infisical", "canonical", "both"):
        raise ValueError(f"api must be infisical, canonical or both, got {api!r}")
    if api in ("canonical", "both"):
        if p.infisical != "dev" and p.canonical is None:
            raise ValueError(f"--api {api} applies to the dev profile only; use --profile canonical for the real surface")
        if p.canonical is None:
            p = dataclasses.replace(p, canonical="legacy", infisical=p.infisical if api == "both" else None)
    if events is False:
        p = dataclasses.replace(p, events="absent")
    return p
