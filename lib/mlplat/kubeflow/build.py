"""Build Kubeflow's manifests offline: chosen components, remote bases from the kit, pull policy
and image rewrites as kustomize patches, in a throwaway copy of the tree.

A build works on a copy of the manifests under the build cache, never on the bundle:

1. choose the entries (the release's ``example/kustomization.yaml`` set, or the training-only
   profile), leaving Istio out when phase 40 owns it;
2. find every remote base below them and point the copied kustomizations at the kit's copies;
   entries whose remotes the kit lacks are left out and listed with their URLs;
3. ``kubectl kustomize`` a generated top-level kustomization (``mlplat-build/``, beside
   ``example/`` so the entries keep their ``../`` paths) with the network closed: proxies point
   at a loopback port that refuses, and git may use no transport but ``file``. A reference the
   kit did not resolve fails loudly with its URL instead of being fetched;
4. from that first output, generate patches (``imagePullPolicy: Always`` -> ``IfNotPresent``,
   images hidden in fields and text moved to the mirror, and, for a KWOK lab, webhooks that
   fail open) and an ``images:`` list for the private registry, add them to the top-level
   kustomization and build again. The build folder stays behind as evidence: an operator can
   rerun ``kubectl kustomize <build>/tree/mlplat-build`` and get the same YAML.

Outputs are cached per (bundle content, kit, entries, options, kubectl version): a second build
of the same inputs reads the YAML back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from ..images import inventory as inv_mod
from ..images import mirror
from ..images.refs import try_parse
from . import remotes as rem
from .source import Source, cache_root

BUILD_FORMAT = "2"  # bump when the build recipe changes, to invalidate cached outputs
BUILD_DIR = "mlplat-build"

TRAINING_ONLY = [
    "../common/cert-manager/overlays/kubeflow",
    "../common/istio/istio-crds/base",
    "../common/istio/istio-namespace/base",
    "../common/istio/istio-install/overlays/oauth2-proxy",
    "../common/kubeflow-namespace/base",
    "../common/kubeflow-roles/base",
    "../applications/training-operator/upstream/overlays/kubeflow",
    "../applications/trainer/overlays",
]
TRAINING_OPERATOR_ONLY = [
    "../common/kubeflow-namespace/base",
    "../common/kubeflow-roles/base",
    "../applications/training-operator/upstream/overlays/kubeflow",
]
# Entries that install Istio itself (left out when phase 40 owns Istio). Kubeflow's own Istio
# objects (cluster-local-gateway, kubeflow-istio-resources) stay: they need Istio, not replace it.
ISTIO_PREFIXES = ("../common/istio/istio-crds/", "../common/istio/istio-namespace/", "../common/istio/istio-install/")
ISTIO_INSTALL_PREFIX = "../common/istio/istio-install/"


class BuildError(RuntimeError):
    """kustomize failed, or the build could not be prepared; the message says which and why."""


@dataclass
class Options:
    """What to build. ``components``: ``default``, ``training-only`` or an explicit entry list."""

    components: str | list[str] = "default"
    istio_owner: str = "phase40"
    mirror_mode: str = "none"  # none | registry | node-import
    registry: str | None = None
    pull_policy: bool = True  # rewrite Always -> IfNotPresent
    lab_without_webhooks: bool = False  # KWOK lab: webhook backends cannot answer (see plan_patches)
    strict_remotes: bool = False  # True: a missing remote fails the build instead of leaving out its entry

    def key(self) -> dict:
        d = dict(self.__dict__)
        if isinstance(d["components"], list):
            d["components"] = list(d["components"])
        return d


@dataclass
class Result:
    """A finished build: the YAML, its objects, and everything the phase reports."""

    source: Source
    options: Options
    entries: list[str]  # built
    left_out: dict[str, str]  # entry -> why
    remotes: list[dict]  # one per remote reference: url, kind, kit path, found, kustomization, entry
    build_dir: Path
    yaml_text: str
    objects: list[dict]
    base_objects: list[dict]
    inventory: inv_mod.Inventory
    base_inventory: inv_mod.Inventory
    patches: dict[str, int]  # what the patches do: pull_policy, mirror_fields, mirror_text, webhooks
    images_entries: list[dict]
    warnings: list[str]
    durations: dict[str, float]
    cached: bool = False
    kustomize_version: str = ""

    @property
    def missing_remotes(self) -> list[dict]:
        return [r for r in self.remotes if not r["found"]]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.objects:
            out[o["kind"]] = out.get(o["kind"], 0) + 1
        return dict(sorted(out.items()))


# -- entries ----------------------------------------------------------------------------------
def example_entries(source: Source) -> list[str]:
    """The ``resources`` of the release's ``example/kustomization.yaml``, in order."""
    data = yaml.safe_load(source.example.read_text()) or {}
    return [e for e in data.get("resources") or [] if isinstance(e, str)]


def example_sort_options(source: Source) -> dict | None:
    data = yaml.safe_load(source.example.read_text()) or {}
    return data.get("sortOptions")


def choose_entries(source: Source, components: str | list[str], istio_owner: str) -> tuple[list[str], dict[str, str]]:
    """The entries to build and those left out (with why)."""
    if isinstance(components, list):
        wanted = list(components)
    elif components == "default":
        wanted = example_entries(source)
    elif components == "training-only":
        wanted = list(TRAINING_ONLY)
    elif components == "training-operator":
        wanted = list(TRAINING_OPERATOR_ONLY)
    else:
        raise BuildError(f"unknown components {components!r}: use default, training-only or training-operator")
    left: dict[str, str] = {}
    out: list[str] = []
    for e in wanted:
        if istio_owner == "phase40" and e.startswith(ISTIO_PREFIXES):
            left[e] = "Istio is installed by phase 40 (kubeflow.istio_owner: phase40)"
            continue
        if not rem.is_remote(e) and not (source.root / "example" / e).resolve().exists():
            left[e] = f"not in this release ({(source.root / 'example' / e).resolve()} does not exist)"
            continue
        out.append(e)
    return out, left


# -- the network guard ------------------------------------------------------------------------
@contextlib.contextmanager
def offline_env():
    """An environment in which kustomize (and the git it calls) cannot reach any network: every
    proxy variable points at a loopback port held closed for the duration (bound, never
    listening, so connects are refused at once), and git allows only the ``file`` transport."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[k] = dead
    for k in ("NO_PROXY", "no_proxy"):
        env.pop(k, None)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL="file", GIT_CONFIG_NOSYSTEM="1")
    try:
        yield env
    finally:
        s.close()


def kubectl_path() -> str:
    from ..kube.manifests import kubectl_binary

    return kubectl_binary()


def kustomize_version() -> str:
    try:
        p = subprocess.run([kubectl_path(), "version", "--client", "-o", "json"], capture_output=True, text=True,
                           timeout=30)
        d = json.loads(p.stdout)
        return f"kubectl {d['clientVersion']['gitVersion']}, kustomize {d.get('kustomizeVersion', '?')}"
    except Exception as e:
        return f"unknown ({e})"


def run_kustomize(folder: Path, *, timeout: float = 600) -> tuple[str, str]:
    """``kubectl kustomize folder`` with the network closed; (stdout, stderr). Raises BuildError."""
    with offline_env() as env:
        try:
            p = subprocess.run([kubectl_path(), "kustomize", str(folder)], capture_output=True, text=True,
                               timeout=timeout, env=env, cwd=folder)
        except subprocess.TimeoutExpired:
            raise BuildError(f"kustomize build of {folder} timed out after {timeout:g} s") from None
    if p.returncode != 0:
        raise BuildError(f"kustomize build of {folder} failed: {_remote_hint(p.stderr)}{p.stderr.strip()[-2500:]}")
    return p.stdout, p.stderr


def _remote_hint(stderr: str) -> str:
    urls = sorted(set(re.findall(r"'(https?://[^']+)'", stderr)))
    if urls and ("127.0.0.1" in stderr or "not allowed" in stderr):
        return (f"it tried to fetch {', '.join(urls)} over the network, which an offline build refuses "
                "(add it to the kit's remote/ folder); kustomize said: ")
    return ""


def warnings_of(stderr: str) -> list[str]:
    return sorted({ln.strip() for ln in stderr.splitlines() if ln.strip()})


# -- the build --------------------------------------------------------------------------------
def cache_key(source: Source, entries: list[str], options: Options, version: str) -> str:
    blob = json.dumps({"format": BUILD_FORMAT, "source": source.digest, "entries": entries,
                       "options": options.key(), "kubectl": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build(source: Source, options: Options | None = None, *, cache: Path | None = None, use_cache: bool = True,
          timeout: float = 900) -> Result:
    """Build the chosen components offline (see the module docstring). Raises :class:`BuildError`."""
    options = options or Options()
    t0 = time.monotonic()
    wanted, left_out = choose_entries(source, options.components, options.istio_owner)
    base = source.root / "example"
    graph = rem.walk_entries(base.resolve(), wanted)
    resolution = rem.resolve(graph.remotes, source.kit)
    remote_rows = []
    for entry, uses in graph.entry_remotes.items():
        for u in uses:
            found = u.remote.url in resolution.found
            remote_rows.append({"url": u.remote.url, "kind": u.remote.kind, "kit_path": u.remote.kit_path,
                                "found": found, "entry": entry,
                                "kustomization": str(u.kustomization.relative_to(source.root))})
    missing_urls = {r.url for r in resolution.missing}
    if graph.problems:
        raise BuildError("; ".join(graph.problems))
    entries = []
    for e in wanted:
        urls = sorted({u.remote.url for u in graph.entry_remotes.get(e, []) if u.remote.url in missing_urls})
        if urls:
            if options.strict_remotes:
                raise BuildError(f"{e} needs remote bases the offline kit lacks: {', '.join(urls)}")
            left_out[e] = "needs remote bases the offline kit lacks: " + ", ".join(urls)
        else:
            entries.append(e)
    if not entries:
        raise BuildError("nothing to build: every chosen entry was left out (" +
                         "; ".join(f"{k}: {v}" for k, v in left_out.items()) + ")")
    version = kustomize_version()
    key = cache_key(source, entries, options, version)
    root = (cache or cache_root()) / "kubeflow" / "builds" / key
    durations: dict[str, float] = {"prepare": 0.0, "base": 0.0, "final": 0.0}
    meta_file = root / "result.json"
    if use_cache and meta_file.exists() and all((root / f).exists() for f in ("final.yaml", "final.json", "base.json")):
        meta = json.loads(meta_file.read_text())
        return _result(source, options, entries, left_out, remote_rows, root, (root / "final.yaml").read_text(),
                       json.loads((root / "final.json").read_text()), json.loads((root / "base.json").read_text()),
                       meta["patches"], meta["images"], meta["warnings"],
                       {**meta["durations"], "cache_read": round(time.monotonic() - t0, 2)}, True, version)

    if root.exists():
        shutil.rmtree(root)
    tree = root / "tree"
    shutil.copytree(source.root, tree, symlinks=True)
    localized = rem.localize(graph, resolution, source.kit, source.root, tree) if source.kit and resolution.found else []
    bdir = tree / BUILD_DIR
    bdir.mkdir(exist_ok=True)
    top = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    sort = example_sort_options(source)
    if sort:
        top["sortOptions"] = sort
    top["resources"] = entries
    _write_top(bdir, top, source, options, entries, localized, {})
    durations["prepare"] = time.monotonic() - t0

    # The first pass depends only on the sources and the entries: shared by every option set.
    base_key = cache_key(source, entries, Options(components=[], istio_owner="", pull_policy=False), version)
    base_cache = root.parent / f"base-{base_key}"
    t1 = time.monotonic()
    if use_cache and all((base_cache / f).exists() for f in ("base.yaml", "base.json", "stderr.txt")):
        base_text = (base_cache / "base.yaml").read_text()
        base_objs = json.loads((base_cache / "base.json").read_text())
        err1 = (base_cache / "stderr.txt").read_text()
        durations["base_cached"] = time.monotonic() - t1
    else:
        base_text, err1 = run_kustomize(bdir, timeout=timeout)
        durations["base"] = time.monotonic() - t1
        base_objs = load_all(base_text)
        base_cache.mkdir(parents=True, exist_ok=True)
        (base_cache / "base.yaml").write_text(base_text)
        (base_cache / "base.json").write_text(json.dumps(base_objs))
        (base_cache / "stderr.txt").write_text(err1)
    (root / "base.yaml").write_text(base_text)

    patches, images_entries, counts = plan_patches(base_objs, options)
    warnings = warnings_of(err1)
    final_text, final_objs = base_text, base_objs
    if patches or images_entries:
        if patches:
            top["patches"] = patches
        if images_entries:
            top["images"] = images_entries
        _write_top(bdir, top, source, options, entries, localized, counts)
        t2 = time.monotonic()
        final_text, err2 = run_kustomize(bdir, timeout=timeout)
        durations["final"] = time.monotonic() - t2
        final_objs = load_all(final_text)
        warnings = sorted(set(warnings) | set(warnings_of(err2)))
    (root / "final.yaml").write_text(final_text)
    (root / "final.json").write_text(json.dumps(final_objs))
    (root / "base.json").write_text(json.dumps(base_objs))
    durations = {k: round(v, 2) for k, v in durations.items()}
    durations["total"] = round(time.monotonic() - t0, 2)
    meta_file.write_text(json.dumps({"patches": counts, "images": images_entries, "warnings": warnings,
                                     "durations": durations, "entries": entries, "left_out": left_out,
                                     "localized": localized, "options": options.key(), "source": source.origin},
                                    indent=1))
    return _result(source, options, entries, left_out, remote_rows, root, final_text, final_objs, base_objs, counts,
                   images_entries, warnings, durations, False, version)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser when present (kserve's CRDs alone are 70 000 lines), and no timestamps:
    Kubernetes strings stay strings, and the objects stay JSON-serializable."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_all(text: str) -> list[dict]:
    """Objects of a multi-document YAML text."""
    return [o for o in yaml.load_all(text, Loader=_Loader) if o]


def _result(source, options, entries, left_out, remote_rows, root, final_text, objs, base_objs, counts,
            images_entries, warnings, durations, cached, version) -> Result:
    return Result(source, options, entries, left_out, remote_rows, root, final_text, objs, base_objs,
                  inv_mod.scan(objs), inv_mod.scan(base_objs), counts, images_entries, warnings, durations,
                  cached, version)


def _write_top(bdir: Path, top: dict, source: Source, options: Options, entries: list[str], localized: list[dict],
               counts: dict) -> None:
    head = [
        "# Generated by mlplat (phase 50): the Kubeflow build actually applied.",
        f"# manifests: {source.origin} (release {source.release or '?'})",
        f"# components: {options.components if isinstance(options.components, str) else 'custom'}; "
        f"istio_owner: {options.istio_owner}; image mirror: {options.mirror_mode}"
        + (f" -> {options.registry}" if options.registry else ""),
    ]
    for loc in localized:
        head.append(f"# remote base {loc['url']} -> {loc['kit']} (in {loc['kustomization']})")
    if counts:
        head.append("# patches: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    (bdir / "kustomization.yaml").write_text("\n".join(head) + "\n" + yaml.safe_dump(top, sort_keys=False, width=200))


# -- patches ----------------------------------------------------------------------------------
def _target(obj: dict) -> dict:
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    md = obj.get("metadata") or {}
    name = md.get("name", "")
    # kustomize matches a patch target against the name before a generator's hash suffix was
    # added, and reads `name` as an anchored regular expression
    names = [name]
    m = re.match(r"^(.*)-[a-z0-9]{10}$", name)
    if m and obj.get("kind") in ("ConfigMap", "Secret"):
        names.append(m.group(1))
    t = {"group": group, "version": version, "kind": obj.get("kind"),
         "name": "|".join(n.replace(".", r"\.") for n in names)}
    if md.get("namespace"):
        t["namespace"] = md["namespace"]
    return t


def _objkey(obj: dict) -> tuple:
    md = obj.get("metadata") or {}
    return (obj.get("apiVersion"), obj.get("kind"), md.get("namespace") or "", md.get("name"))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def mirror_ref(image: str, registry: str) -> str:
    """Where the manifests should name ``image`` in the private registry (see
    :func:`mlplat.images.mirror.rewrite`)."""
    ref = try_parse(image)
    if ref is None:
        raise BuildError(f"{image!r} is not an image reference")
    return mirror.rewrite(ref, registry)


_HUB = re.compile(r'("hub"\s*:\s*")([^"]+)(")')


def plan_patches(objs: list[dict], options: Options) -> tuple[list[dict], list[dict], dict[str, int]]:
    """kustomize ``patches`` (JSON 6902, one per object) and ``images`` entries for ``objs``."""
    ops: dict[tuple, list[dict]] = {}
    objs_by_key = {_objkey(o): o for o in objs}
    counts: dict[str, int] = {}
    string_edits: dict[tuple, dict] = {}  # (objkey, path tuple) -> {"spans": [...], "hub": bool, "always": bool}

    def add(obj, op):
        ops.setdefault(_objkey(obj), []).append(op)

    def bump(k, n=1):
        counts[k] = counts.get(k, 0) + n

    if options.pull_policy:
        for obj, f in ((o, f) for o in objs for f in inv_mod.pull_policy_findings([o])):
            if f["action"] == "text":
                string_edits.setdefault((_objkey(obj), tuple(f["path"])), {"spans": [], "hub": False})["always"] = True
            else:
                add(obj, {"op": f["action"], "path": inv_mod.pointer(f["path"]) + "/imagePullPolicy",
                          "value": "IfNotPresent"})
            bump("pull_policy")

    images_entries: list[dict] = []
    if options.mirror_mode == "registry":
        if not options.registry:
            raise BuildError("kubeflow.image_mirror.mode is registry but image_mirror.registry is empty")
        written: dict[str, str] = {}
        for obj in objs:
            for u in inv_mod.scan_object(obj):
                if u.source == "container":
                    ref = try_parse(u.image)
                    written[ref.written_name] = mirror.mirror_name(ref, options.registry)
                elif u.source == "field":
                    add(obj, {"op": "replace", "path": inv_mod.pointer(u.path),
                              "value": mirror_ref(u.image, options.registry)})
                    bump("mirror_fields")
                elif u.source == "text":
                    e = string_edits.setdefault((_objkey(obj), tuple(u.path)), {"spans": [], "hub": False})
                    e["spans"].append((u.span, mirror_ref(u.image, options.registry)))
                    bump("mirror_text")
                elif u.source == "composed":
                    string_edits.setdefault((_objkey(obj), tuple(u.path)), {"spans": [], "hub": False})["hub"] = True
                    bump("mirror_hub")
            # Istio's values name a registry as "hub" (images are composed from it later), also
            # where no image is composed in the same text (the `values` ConfigMap's copies)
            for path, _parent, _key, value in inv_mod._walk(obj, []):
                if isinstance(value, str) and '"hub"' in value and any(
                        _registry_like(m.group(2)) for m in _HUB.finditer(value)):
                    e = string_edits.setdefault((_objkey(obj), tuple(path)), {"spans": [], "hub": False})
                    if not e["hub"]:
                        e["hub"] = True
                        bump("mirror_hub")
        images_entries = [{"name": n, "newName": new} for n, new in sorted(written.items())]
        counts["mirror_images"] = len(images_entries)

    for (key, path), e in sorted(string_edits.items(), key=lambda kv: (str(kv[0][0]), [str(p) for p in kv[0][1]])):
        obj = objs_by_key[key]
        value = _get(obj, path)
        new = value
        for (start, end), repl in sorted(e["spans"], key=lambda s: s[0][0], reverse=True):
            new = new[:start] + repl + new[end:]
        if e.get("hub") and options.registry:
            reg = options.registry.rstrip("/")
            new = _HUB.sub(lambda m, reg=reg: m.group(1) + (m.group(2) if m.group(2).startswith(reg + "/")
                                                            or not _registry_like(m.group(2))
                                                            else mirror_hub(m.group(2), reg)) + m.group(3), new)
        if e.get("always"):
            new = inv_mod.replace_always_in_text(new)
        if new != value:
            add(obj, {"op": "replace", "path": inv_mod.pointer(path), "value": new})

    deletes: list[dict] = []
    if options.lab_without_webhooks:
        # On a KWOK lab the webhook backends are simulated pods that never answer (and the lab's
        # API server reaches no Service), so pods in injected namespaces could not be created and
        # objects behind a webhook could not be applied. The lab build leaves admission webhooks
        # and Service-backed API services out and turns CRD conversion webhooks off; a real
        # cluster gets them unchanged.
        for obj in objs:
            kind = obj.get("kind")
            if kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration") or (
                    kind == "APIService" and (obj.get("spec") or {}).get("service")):
                deletes.append(obj)
                bump("lab_webhooks_left_out")
            elif kind == "CustomResourceDefinition" and ((obj.get("spec") or {}).get("conversion") or {}).get(
                    "strategy") == "Webhook":
                add(obj, {"op": "replace", "path": "/spec/conversion", "value": {"strategy": "None"}})
                bump("lab_conversion_webhooks_off")

    patches = []
    for key, o_ops in ops.items():
        obj = objs_by_key[key]
        patches.append({"target": _target(obj), "patch": yaml.safe_dump(o_ops, sort_keys=False, width=100000)})
    for obj in deletes:
        md = obj["metadata"]
        body = {"$patch": "delete", "apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {"name": md["name"], **({"namespace": md["namespace"]} if md.get("namespace") else {})}}
        patches.append({"target": _target(obj), "patch": yaml.safe_dump(body, sort_keys=False)})
    return patches, images_entries, counts


def _registry_like(hub: str) -> bool:
    first = hub.split("/", 1)[0]
    return "." in first or ":" in first or first == "localhost"


def mirror_hub(hub: str, registry: str) -> str:
    """Istio's ``hub`` (a registry plus path, no image) moved to the mirror."""
    first, _, rest = hub.partition("/")
    if not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", hub
    return f"{registry}/{first.replace(':', '-')}/{rest}" if rest else f"{registry}/{first.replace(':', '-')}"


# -- checks on a build ------------------------------------------------------------------------
def left_always(objs: Iterable[dict]) -> list[dict]:
    """Containers (or text) that still say ``imagePullPolicy: Always`` or pull floating tags."""
    return inv_mod.pull_policy_findings(objs)
