"""Mirror and preload plans for an image inventory, as data and as the commands an operator runs.

Two ways to run Kubeflow where its registries (ghcr.io, gcr.io, quay.io, docker.io, nvcr.io) cannot
be reached:

- **registry**: copy every image into a private registry (on a machine that reaches both), and
  point the manifests at it (kustomize ``images:`` plus patches for images named elsewhere; see
  :mod:`mlplat.kubeflow.build`). Images keep their source registry as the first path component
  (``mirror:5000/ghcr.io/kubeflow/...``) so two registries' images of one path never collide.
  ``skopeo copy --all --preserve-digests`` keeps manifest lists and digests, so digest-pinned
  references (knative's) resolve in the mirror unchanged.
- **node-import**: pull (optionally from a nearby mirror, then tag back to the canonical name),
  save to archives, carry the archives in, and import them into every node's containerd
  (``ctr -n k8s.io images import``) or Docker (``docker load``). Images a node already holds
  (from ``ctr -n k8s.io images ls -q``) are skipped on that node.

:func:`pull_check` says which images a node would still try to pull from a registry it cannot
reach, and which containers pull on every start (``imagePullPolicy: Always``).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Iterable

from .inventory import Inventory, pull_policy_findings
from .refs import ImageRef, try_parse

DEFAULT_PLATFORM = "linux/amd64"
REMOTE_DIR = "/var/tmp/mlplat-images"
STAGING_NAMESPACE = "mlplat"  # containerd namespace on the staging machine, apart from k8s.io


def mirror_ref(ref: ImageRef, registry: str) -> str:
    """``<registry>/<source registry>/<path>`` with the same tag and digest."""
    s = f"{registry.rstrip('/')}/{ref.registry.replace(':', '-')}/{ref.repository}"
    if ref.tag or not ref.digest:
        s += f":{ref.tag or 'latest'}"
    if ref.digest:
        s += f"@{ref.digest}"
    return s


def rewrite(ref: ImageRef, registry: str) -> str:
    """The reference as the manifests should name it in the mirror: like :func:`mirror_ref`, but
    a reference written without a tag stays without one (KServe appends its own version to some)."""
    s = f"{registry.rstrip('/')}/{ref.registry.replace(':', '-')}/{ref.repository}"
    if ref.tag:
        s += f":{ref.tag}"
    if ref.digest:
        s += f"@{ref.digest}"
    return s


def mirror_name(ref: ImageRef, registry: str) -> str:
    """The mirror's name of an image, without tag or digest (a kustomize ``images:`` newName)."""
    return f"{registry.rstrip('/')}/{ref.registry.replace(':', '-')}/{ref.repository}"


def mirror_push_ref(ref: ImageRef, registry: str) -> str:
    """Where the copy is pushed: the mirror reference, except that a digest-only reference gets
    the tag ``sha256-<hex>`` (registries address the pushed manifest by that same digest, so the
    rewritten ``...@sha256:<hex>`` resolves)."""
    base = f"{registry.rstrip('/')}/{ref.registry.replace(':', '-')}/{ref.repository}"
    if ref.digest and not ref.tag:
        return f"{base}:{ref.digest.replace(':', '-')}"
    return f"{base}:{ref.tag or 'latest'}"


def archive_name(ref: ImageRef) -> str:
    """A file name for one image's archive: readable, unique, not too long."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", ref.full)
    if len(s) > 120:
        s = s[:100] + "_" + hashlib.sha256(ref.full.encode()).hexdigest()[:12]
    return s + ".tar"


def _sorted_refs(images: Iterable[ImageRef | str]) -> list[ImageRef]:
    out: dict[str, ImageRef] = {}
    for i in images:
        r = i if isinstance(i, ImageRef) else try_parse(i)
        if r is None:
            raise ValueError(f"{i!r} is not an image reference")
        out.setdefault(r.full, r)
    return [out[k] for k in sorted(out)]


def images_of(inventory: Inventory | Iterable[ImageRef | str]) -> list[ImageRef]:
    if isinstance(inventory, Inventory):
        return _sorted_refs(inventory.refs.values())
    return _sorted_refs(inventory)


# -- private registry ---------------------------------------------------------------------------
@dataclass
class RegistryPlan:
    """Copy every image into ``registry``; ``rows`` map source to target."""

    registry: str
    rows: list[dict]
    commands: list[str]

    def text(self) -> str:
        return "\n".join(self.commands) + "\n"


def registry_plan(inventory: Inventory | Iterable[ImageRef | str], registry: str, *, tool: str = "skopeo",
                  platform: str = DEFAULT_PLATFORM) -> RegistryPlan:
    """Commands that copy every image of ``inventory`` into ``registry`` (run where both are reachable).

    ``tool``: ``skopeo`` (default; keeps manifest lists and digests) or ``docker`` (pull, tag, push
    for one platform; a digest-pinned image then gets a new digest in the mirror, so such images
    are marked and need skopeo)."""
    refs = images_of(inventory)
    rows, cmds = [], [f"# mirror {len(refs)} image(s) into {registry} ({tool})", "set -euo pipefail"]
    for i, r in enumerate(refs, 1):
        dst = mirror_ref(r, registry)
        push = mirror_push_ref(r, registry)
        note = ""
        cmds.append(f"# [{i}/{len(refs)}] {r.full}")
        if tool == "skopeo":
            cmds.append(f"skopeo copy --all --preserve-digests --retry-times 3 docker://{r.full} docker://{push}")
        elif tool == "docker":
            if r.digest:
                note = "digest-pinned: docker push changes the digest; copy this one with skopeo"
                cmds.append(f"# {note}")
            cmds += [f"docker pull --platform {platform} {r.full}", f"docker tag {r.full} {push}", f"docker push {push}"]
        else:
            raise ValueError(f"unknown tool {tool!r}: skopeo or docker")
        rows.append({"image": r.full, "mirror": dst, "push_as": push, "note": note})
    return RegistryPlan(registry, rows, cmds)


# -- per-node import ----------------------------------------------------------------------------
def parse_image_list(text: str) -> set[str]:
    """Image names from ``ctr -n k8s.io images ls -q`` (one name per line; fully qualified, digest
    names included) or ``docker images --format '{{.Repository}}:{{.Tag}}'`` (familiar names),
    normalized to fully qualified references. ``sha256:`` ids and ``<none>`` lines are dropped."""
    out: set[str] = set()
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("sha256:", "REF", "<none>")) or s.endswith(":<none>"):
            continue
        r = try_parse(s.split()[0])
        if r is not None:
            out.add(r.full)
    return out


def present_on(ref: ImageRef, names: set[str]) -> bool:
    """Does a node holding ``names`` have ``ref`` (by its reference, or by its digest)?"""
    if ref.full in names:
        return True
    if ref.digest:
        return f"{ref.name}@{ref.digest}" in names
    return False


@dataclass
class HostImport:
    host: str
    to_import: list[ImageRef] = field(default_factory=list)
    present: list[ImageRef] = field(default_factory=list)
    probed: bool = False


@dataclass
class ImportPlan:
    """Pull/tag/save on a connected staging machine; copy and import per host."""

    archive_dir: str
    runtime: str  # containerd | docker
    platform: str
    images: list[ImageRef]
    pull_from: str | None
    staging: list[str]
    hosts: list[HostImport]

    def host_commands(self, host: HostImport, address: str | None = None, user: str = "root") -> list[str]:
        """The commands one host needs, as an operator would type them (copy, import, clean up)."""
        dest = address or host.host
        cmds = [f"# {host.host}: {len(host.to_import)} to import, {len(host.present)} already present"
                + ("" if host.probed else " (not probed)")]
        if not host.to_import:
            return cmds
        sudo = "" if user == "root" else "sudo "
        cmds.append(f"ssh {user}@{dest} mkdir -p {REMOTE_DIR}")
        for i, r in enumerate(host.to_import, 1):
            a = archive_name(r)
            cmds.append(f"# [{i}/{len(host.to_import)}] {r.full}")
            cmds.append(f"scp {shlex.quote(self.archive_dir.rstrip('/') + '/' + a)} {user}@{dest}:{REMOTE_DIR}/{a}")
            cmds.append(f"ssh {user}@{dest} "
                        + shlex.quote(f"{sudo}{self.import_command(r)} && rm -f {REMOTE_DIR}/{a}"))
        return cmds

    def import_command(self, ref: ImageRef) -> str:
        a = f"{REMOTE_DIR}/{archive_name(ref)}"
        if self.runtime == "docker":
            return f"docker load -i {a}"
        return f"ctr -n k8s.io images import --platform {self.platform} {a}"

    def text(self, addresses: dict[str, str] | None = None, user: str = "root") -> str:
        lines = ["# --- on a connected staging machine: pull, tag, save ---", *self.staging,
                 "# --- carry the archives in, then per host: copy and import (images already present are skipped) ---"]
        for h in self.hosts:
            lines += self.host_commands(h, (addresses or {}).get(h.host), user)
        return "\n".join(lines) + "\n"

    def rows(self) -> list[dict]:
        return [{"host": h.host, "to_import": len(h.to_import), "present": len(h.present), "probed": h.probed}
                for h in self.hosts]


def node_import_plan(inventory: Inventory | Iterable[ImageRef | str], hosts: list[str], archive_dir: str, *,
                     present: dict[str, set[str]] | None = None, pull_from: str | None = None,
                     runtime: str = "containerd", stager: str = "ctr", platform: str = DEFAULT_PLATFORM) -> ImportPlan:
    """Plan the per-node import of every image.

    ``present``: host -> names it already holds (:func:`parse_image_list` of a probe); a host
    without an entry is planned to receive everything. ``pull_from``: a reachable mirror to pull
    from (``<pull_from>/<source registry>/<path>``), tagged back to the canonical name before
    saving. ``stager``: ``ctr`` (keeps manifests and digests: needed for digest-pinned images) or
    ``docker`` (pull/tag/save; docker save rewrites manifests, so digest-pinned images are marked).
    """
    refs = images_of(inventory)
    staging = [f"# {len(refs)} image(s), platform {platform}, archives in {archive_dir}", "set -euo pipefail",
               f"mkdir -p {shlex.quote(archive_dir)}"]
    for i, r in enumerate(refs, 1):
        src = mirror_ref(r, pull_from) if pull_from else r.full
        out = shlex.quote(f"{archive_dir.rstrip('/')}/{archive_name(r)}")
        staging.append(f"# [{i}/{len(refs)}] {r.full}")
        if stager == "ctr":
            ns = f"ctr -n {STAGING_NAMESPACE} images"
            staging.append(f"{ns} pull --platform {platform} {src}")
            if src != r.full:
                staging.append(f"{ns} tag --force {src} {r.full}")
            staging.append(f"{ns} export --platform {platform} {out} {r.full}")
        elif stager == "docker":
            if r.digest:
                staging.append("# digest-pinned: docker save drops the original manifest; stage this one with ctr")
            staging.append(f"docker pull --platform {platform} {src}")
            if src != r.full:
                staging.append(f"docker tag {src} {r.full}")
            staging.append(f"docker save -o {out} {r.full}")
        else:
            raise ValueError(f"unknown stager {stager!r}: ctr or docker")
    plan_hosts = []
    for h in hosts:
        names = (present or {}).get(h)
        hi = HostImport(h, probed=names is not None)
        for r in refs:
            (hi.present if names is not None and present_on(r, names) else hi.to_import).append(r)
        plan_hosts.append(hi)
    return ImportPlan(archive_dir, runtime, platform, refs, pull_from, staging, plan_hosts)


PROBE_DOCKER = "docker images --format '{{.Repository}}:{{.Tag}}'"


# -- the check ------------------------------------------------------------------------------------
def pull_check(inventory: Inventory, objs: Iterable[dict], *, reachable: set[str] | None,
               preloaded: dict[str, set[str]] | None = None, hosts: list[str] | None = None) -> list[dict]:
    """Images a node would still pull from a registry it cannot reach, and containers that pull on
    every start. ``reachable``: registries the nodes reach (None: all, so only pull policies are
    checked). ``preloaded``: host -> images it holds (or will hold after the import plan).
    One finding per problem: image, registry, problem, where."""
    findings: list[dict] = []
    by_image = inventory.by_image()
    for full, uses in by_image.items():
        ref = try_parse(uses[0].image)
        if ref is None:
            continue
        where = sorted({u.object for u in uses})
        if reachable is None or ref.registry in reachable:
            continue
        if preloaded is not None:
            missing = [h for h in (hosts or sorted(preloaded)) if not present_on(ref, preloaded.get(h, set()))]
            if not missing:
                continue
            findings.append({"image": full, "registry": ref.registry,
                             "problem": f"not preloaded on {', '.join(missing)}, and {ref.registry} is unreachable",
                             "where": where[0] + (f" (+{len(where) - 1})" if len(where) > 1 else "")})
            continue
        findings.append({"image": full, "registry": ref.registry,
                         "problem": f"would be pulled from {ref.registry}, which the nodes cannot reach",
                         "where": where[0] + (f" (+{len(where) - 1})" if len(where) > 1 else "")})
    for f in pull_policy_findings(objs):
        findings.append({"image": f.get("image", ""), "registry": "",
                         "problem": f"{f['why']}: pulls on every start even when preloaded",
                         "where": f"{f['kind']} {f['namespace'] + '/' if f['namespace'] else ''}{f['name']}"})
    return findings
