"""Helpers shared by the Kubeflow tests."""

from __future__ import annotations

import re

# Deliberately broader than the product's scanner: any token with a path and a tag or digest, any
# value after a key containing "image" in embedded text, any scalar under a key containing "image".
BROAD = re.compile(r"[A-Za-z0-9][\w.-]*(?::\d+)?(?:/[\w.-]+)+(?::[\w][\w.-]*|@sha256:[0-9a-f]{64})")
KEYED = re.compile(r"""["']?([\w.-]*[Ii][Mm][Aa][Gg][Ee][\w.-]*)["']?\s*[:=]\s*["']?([^\s"',}]+)""")


def _strings(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _strings(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _strings(v, path + (i,))
    elif isinstance(x, str):
        yield path, x


def broad_net(objs) -> dict[str, set]:
    """Every candidate string -> where it was seen (kind, name, key)."""
    found: dict[str, set] = {}
    for o in objs:
        crd = o["kind"] == "CustomResourceDefinition"
        for path, s in _strings(o):
            if crd and len(path) > 3 and path[3] == "schema":
                continue  # CRD schemas: property definitions and prose, never pulled
            where = (o["kind"], o["metadata"]["name"], str(path[-1]) if path else "")
            for m in BROAD.finditer(s):
                found.setdefault(m.group(0).rstrip("."), set()).add(where)
            for m in KEYED.finditer(s):
                found.setdefault(m.group(2).rstrip("."), set()).add(where)
            if path and isinstance(path[-1], str) and "image" in path[-1].lower():
                found.setdefault(s, set()).add(where)
    return found
