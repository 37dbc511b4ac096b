"""What the Infisical-shaped surfaces (infisical.py, infisical_events.py) share: zod-style body
validation, the bearer and rate checks, the secret JSON shapes and project/permission lookups.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import api_kit as api
from .seed import Identity
from .model import KmsError, Project, Secret
from .state import DevKms
from .zod import MISSING, check, enum_query, type_issue

HIDDEN = "<hidden-by-infisical>"


def kms(request: web.Request) -> DevKms:
    return api.kms(request)


def invalid(request: web.Request, issues: list[dict]) -> KmsError:
    return KmsError(kms(request).profile.validation_status, "ValidationFailure", issues)  # type: ignore[arg-type]


async def body_of(request: web.Request) -> dict:
    """The JSON body, as fastify parses it: empty or malformed JSON is a 400; a non-object is a
    validation failure."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise KmsError(413, "PayloadTooLarge", f"Request body is too large (the limit is {api.MAX_BODY} bytes)") from None
    if not raw.strip():
        raise KmsError(400, "BadRequest", "Body cannot be empty when content-type is set to 'application/json'")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KmsError(400, "BadRequest", "Body is not valid JSON but content-type is set to 'application/json'") from None
    if not isinstance(body, dict):
        raise invalid(request, [type_issue([], "object", body)])
    return body


def validate(request: web.Request, body: dict, specs: list) -> None:
    issues = check(body, specs)
    if issues:
        raise invalid(request, issues)


def authenticate(request: web.Request) -> Identity:
    state = kms(request)
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    ident = state.authenticate_real(bearer)
    request[api.IDENTITY] = ident.name
    check_rate(state, ident.name)
    return ident


def check_rate(state: DevKms, identity: str) -> None:
    """The dev limiter (per identity per second), answered as the profile's server answers it:
    older servers turn the 429 into a 500 "Something went wrong" that keeps Retry-After."""
    try:
        state.check_rate(identity)
    except KmsError as exc:
        wait = exc.headers.get("Retry-After", "1")
        if state.profile.infisical == "recorded":
            raise KmsError(500, "InternalServerError", "Something went wrong", {"Retry-After": wait}) from None
        raise KmsError(429, "RateLimitExceeded", f"Rate limit exceeded. Please try again in {wait} seconds",
                       {"Retry-After": wait}) from None


# ---- shapes --------------------------------------------------------------------------------

def secret_json(state: DevKms, project: Project, env: str, path: str, s: Secret, kind: str, *, view: bool = True,
                value: str | None = None) -> dict:
    """kind: "list" (adds secretPath, tags), "import" (workspace "", no reminder, dates, path, tags),
    "single" (adds tags), "single-import" and "write" (neither)."""
    newer = state.profile.infisical == "newer"
    out: dict[str, Any] = {"id": s.id, "_id": s.id, "workspace": "" if kind == "import" else project.id,
                           "environment": env, "version": s.version, "type": "shared", "secretKey": s.key,
                           "secretValue": (s.value if value is None else value) if view else HIDDEN}
    if newer:
        out["secretValueHidden"] = not view
    out["secretComment"] = s.comment
    if kind != "import":
        out["secretReminderNote"] = None
        out["secretReminderRepeatDays"] = None
    out["skipMultilineEncoding"] = False
    out["metadata"] = None
    if newer:
        out["secretMetadata"] = []
    if kind != "import":
        out["createdAt"], out["updatedAt"] = s.created_at, s.updated_at
    if kind == "list":
        out["secretPath"] = path
    if kind in ("list", "single"):
        out["tags"] = []
    return out


# ---- lookups -------------------------------------------------------------------------------

def project_for_read(state: DevKms, workspace_id: str | None, slug: str | None) -> Project:
    if workspace_id:
        p = next((x for x in state.projects.values() if x.id == workspace_id), None)
        if p is None:
            raise KmsError(404, "NotFound", "Project not found during bot lookup. Are you sure you are using the correct project ID?")
        return p
    p = state.projects.get(slug or "")
    if p is None:
        if state.profile.unknown_project_status == 500:
            raise KmsError(500, "Failed to find project by slug", "Something went wrong")
        raise KmsError(404, "NotFound", f"Project with slug '{str(slug)[:200]}' not found")
    return p


def require_member(ident: Identity, project: Project) -> None:
    if not any(r.project in ("*", project.slug, project.id) for r in ident.access):
        raise KmsError(403, "Identity is not a member of the specified project", "You are not allowed to access this resource")


def require(state: DevKms, ident: Identity, action: str, project: Project, env: str, path: str) -> None:
    require_member(ident, project)
    if not state.can(ident, "read" if action == "read" else "write", project, env, path):
        raise KmsError(403, "PermissionDenied", f"You are not allowed to {action} on secrets")


def read_query(request: web.Request, v4: bool = False) -> tuple[Project, str, str, dict[str, bool]]:
    """v3 (`workspaceSlug`/`workspaceId`, include_imports and expandSecretReferences default false)
    or v4 (`projectId` only, includeImports and expandSecretReferences default true)."""
    state = kms(request)
    q = request.query
    names = ["recursive", "includeImports" if v4 else "include_imports", "expandSecretReferences"]
    if state.profile.infisical == "newer":
        names.append("viewSecretValue")
    issues = enum_query(q, names)
    if v4 and not q.get("projectId"):
        issues.insert(0, type_issue(["projectId"], "string", MISSING))
    if issues:
        raise invalid(request, issues)
    workspace_id, slug, env = (q.get("projectId"), None, q.get("environment")) if v4 else \
        (q.get("workspaceId"), q.get("workspaceSlug"), q.get("environment"))
    if not (workspace_id or slug) or not env:
        raise KmsError(400, "BadRequest", "Missing workspace id or environment")
    path = q.get("secretPath") or "/"
    try:
        path = api.parse_path(path, "secretPath")
    except KmsError as exc:  # the real servers refuse such a path in validation
        raise invalid(request, [{"code": "custom", "message": exc.message, "path": ["secretPath"]}]) from None
    defaults = {"includeImports": v4, "expandSecretReferences": v4, "viewSecretValue": True}
    flags = {n: q[n] == "true" if n in q else defaults.get(n, False) for n in names}
    flags.setdefault("viewSecretValue", True)
    if v4:
        flags["include_imports"] = flags.pop("includeImports")
    return project_for_read(state, workspace_id, slug), env, path, flags


def authorised_read(request: web.Request, v4: bool = False) -> tuple[Any, ...]:
    """The opening of both read routes: the bearer, the query, the read permission (the audit's
    location set first). (identity, state, project, env slug, path, flags, show values?, the
    environment and the folder, each None where the seed has none)."""
    ident = authenticate(request)
    project, env_slug, path, flags = read_query(request, v4)
    request[api.LOCATION] = (project.slug, env_slug, path)
    state = kms(request)
    require(state, ident, "read", project, env_slug, path)
    view = flags["viewSecretValue"] or not state.profile.view_secret_value
    env = project.environments.get(env_slug)
    folder = env.folders.get(path) if env else None
    return ident, state, project, env_slug, path, flags, view, env, folder
