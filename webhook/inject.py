"""`kms-injector inject [--settings FILE] [--namespace NS] -f FILE|-`: mutate manifests offline.

Like `istioctl kube-inject`: reads multi-document YAML, mutates every pod template exactly as the
webhook would (the same `mutate_pod`), prints the result. Kinds without a pod template pass
through unchanged. A refused annotation prints the reason naming the document and exits 1
(nothing is printed to stdout then, so a pipe into `kubectl apply` applies nothing).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

from .annotations import AnnotationError
from .pod_patch import PodShapeError, mutate_pod
from .patch import PatchError, apply
from .settings import Settings, SettingsError, load_settings

# kind -> path of keys from the object to its pod template ([] = the object is the pod).
TEMPLATE_PATHS: dict[str, list[str]] = {
    "Pod": [],
    "Deployment": ["spec", "template"],
    "StatefulSet": ["spec", "template"],
    "DaemonSet": ["spec", "template"],
    "ReplicaSet": ["spec", "template"],
    "ReplicationController": ["spec", "template"],
    "Job": ["spec", "template"],
    "CronJob": ["spec", "jobTemplate", "spec", "template"],
}


class InjectError(Exception):
    pass


def _describe(doc: Any, index: str) -> str:
    if not isinstance(doc, dict):
        return f"document {index}"
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "(unnamed)"
    ns = meta.get("namespace")
    return f"document {index} ({doc.get('kind', '?')} {ns + '/' if isinstance(ns, str) else ''}{name})"


def inject_object(doc: Any, settings: Settings, namespace: str, index: str = "1",
                  warnings: list[str] | None = None) -> Any:
    """One parsed YAML document -> the same document with its pod template(s) mutated."""
    if not isinstance(doc, dict):
        return doc
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        items = [inject_object(item, settings, namespace, f"{index}.items[{i}]", warnings) for i, item in enumerate(doc["items"])]
        return {**doc, "items": items}
    if kind not in TEMPLATE_PATHS:
        return doc
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) and meta.get("namespace") else namespace
    path = TEMPLATE_PATHS[kind]
    template: Any = doc
    for key in path:
        template = template.get(key) if isinstance(template, dict) else None
    where = _describe(doc, index)
    if not isinstance(template, dict):
        raise InjectError(f"{where}: has no pod template at {'.'.join(path)}")
    try:
        ops, warns = mutate_pod(template, ns, settings)
        if not ops:
            if warnings is not None:
                warnings.extend(f"{where}: {w}" for w in warns)
            return doc
        patched = apply(template, ops)
    except (AnnotationError, PodShapeError, PatchError) as exc:
        raise InjectError(f"{where}: {exc}") from None
    if warnings is not None:
        warnings.extend(f"{where}: {w}" for w in warns)
    if not path:
        return patched
    out = dict(doc)
    node = out
    for key in path[:-1]:  # copy the chain down to the template, leave the input untouched
        node[key] = dict(node[key])
        node = node[key]
    node[path[-1]] = patched
    return out


def inject_documents(docs: list[Any], settings: Settings, namespace: str, warnings: list[str] | None = None) -> list[Any]:
    return [inject_object(d, settings, namespace, str(i + 1), warnings) for i, d in enumerate(docs)]


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    with open(source, encoding="utf-8") as fh:
        return fh.read()


def _load_all(text: str) -> Iterator[Any]:
    import yaml

    return yaml.safe_load_all(text)


def main(argv: list[str]) -> int:
    import yaml

    class _NoAliases(yaml.SafeDumper):  # kubectl users expect plain YAML, not &id001 anchors
        def ignore_aliases(self, data: Any) -> bool:
            return True

    p = argparse.ArgumentParser(prog="kms-injector inject",
                                description="Mutate Kubernetes manifests offline, exactly as the webhook would.")
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML manifests to read ('-' for stdin)")
    p.add_argument("--settings", metavar="FILE", help="webhook settings YAML (the same file the webhook uses)")
    p.add_argument("-n", "--namespace", default="default", help="namespace for objects that name none (default: default)")
    args = p.parse_args(argv)
    try:
        settings = load_settings(args.settings) if args.settings else Settings()
    except SettingsError as exc:
        print(f"kms-injector inject: {exc}", file=sys.stderr)
        return 1
    try:
        text = _read(args.filename)
    except OSError as exc:
        print(f"kms-injector inject: cannot read {args.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        docs = [d for d in _load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        print(f"kms-injector inject: {args.filename} is not valid YAML{where}", file=sys.stderr)
        return 1
    warnings: list[str] = []
    try:
        out = inject_documents(docs, settings, args.namespace, warnings)
    except InjectError as exc:
        print(f"kms-injector inject: {exc}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    sys.stdout.write(yaml.dump_all(out, Dumper=_NoAliases, sort_keys=False, default_flow_style=False))
    return 0
