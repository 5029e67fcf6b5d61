"""Phase 50, kubeflow: Kubeflow from a git ref or, air-gapped, from an offline bundle.

Steps: find the manifests; resolve every remote kustomize base from the offline kit; build the
chosen components with the network closed (``imagePullPolicy: Always`` -> ``IfNotPresent`` and
image rewrites as kustomize patches; Istio left out when phase 40 owns it); the image inventory
and the mirror or per-node import plan; the check that no image would be pulled from a registry
the nodes cannot reach; the Istio pairing; the ordered server-side apply with bounded retries
(plan mode: a server-side dry run, when a cluster is given); every Deployment and StatefulSet
available; how to reach the dashboard.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd

from ..images import mirror
from ..images.inventory import pull_policy_findings
from ..kubeflow import build as kbuild
from ..kubeflow import install, remotes
from ..kubeflow import source as ksource
from ..report import StepResult, Table, failed, results_table, skipped
from . import common

NUMBER, NAME = "50", "kubeflow"
CLUSTER = "(cluster)"
BUILD = "(build)"


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False, **_ignored) -> Table:
    """Load and validate the params; show what this run uses."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    kf = ctx.params.kubeflow
    t = common.header_table(ctx)
    extra = pd.DataFrame([
        {"setting": "kubeflow source", "value": kf.source + (f" ({kf.bundle})" if kf.source == "offline"
                                                               else f" ({kf.git_url}@{kf.git_ref})")},
        {"setting": "components", "value": kf.components},
        {"setting": "istio owner", "value": kf.istio_owner},
        {"setting": "image mirror", "value": kf.image_mirror.mode + (f" -> {kf.image_mirror.registry}"
                                                                      if kf.image_mirror.registry else "")},
    ])
    return Table(pd.concat([t.frame, extra], ignore_index=True), t.title, status_col=None)


def _ctx():
    return common.context(NUMBER)


def _kwok(ctx) -> bool:
    lab = ctx.params.lab
    return lab is not None and lab.nodes == "kwok"


def _save(ctx, name: str, text: str) -> str:
    """Write an artefact next to the verdict (when the run has a folder); return where."""
    if ctx.run_dir is None:
        return ""
    p = Path(ctx.run_dir) / "kubeflow" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


def _options(ctx) -> kbuild.Options:
    kf = ctx.params.kubeflow
    return kbuild.Options(components=kf.components, istio_owner=kf.istio_owner, mirror_mode=kf.image_mirror.mode,
                          registry=kf.image_mirror.registry if kf.image_mirror.mode == "registry" else None,
                          pull_policy=True, lab_without_webhooks=_kwok(ctx))


# -- 1. source ----------------------------------------------------------------------------------
def manifests_source() -> Table:
    """Find the manifests: unpack the offline bundle (once, into the cache), or fetch the git ref."""
    ctx = _ctx()
    kf = ctx.params.kubeflow
    step = "manifests | source"
    t0 = time.monotonic()
    ctx.extra.pop("source", None)
    try:
        if kf.source == "offline":
            src = ksource.offline(kf.bundle)
        elif ctx.apply:
            src = ksource.git_fetch(kf.git_url, kf.git_ref)
        else:
            plan = ksource.git_fetch_plan(kf.git_url, kf.git_ref)
            ctx.extra["git_plan"] = plan
            return ctx.phase.record("source", [skipped(BUILD, step, "online source, plan mode: would run "
                                                       + "; ".join(plan) + " and record its remote bases into a kit")],
                                    "Manifests source")
    except ksource.SourceError as e:
        return ctx.phase.record("source", [failed(BUILD, step, str(e))], "Manifests source")
    ctx.extra["source"] = src
    release_ok = not src.release or src.release == ctx.params.versions.kubeflow
    rows = [StepResult(BUILD, step, ok=release_ok, duration=time.monotonic() - t0,
                       message=(f"{src.kind}: release {src.release or '?'} at {src.root}; " + "; ".join(src.notes))
                       if release_ok else f"the bundle holds Kubeflow {src.release}, the params say "
                       f"versions.kubeflow {ctx.params.versions.kubeflow}: use the matching bundle or fix the params",
                       data={"root": str(src.root), "kit": str(src.kit) if src.kit else "", "digest": src.digest})]
    return ctx.phase.record("source", rows, "Manifests source")


def _source(ctx):
    src = ctx.extra.get("source")
    if src is None:
        raise common.SetupFirst("no manifests: run the 'Manifests source' cell first (and fix what it reported)")
    return src


# -- 2. remote bases -------------------------------------------------------------------------------
def remote_bases() -> Table:
    """Every remote base below the chosen components, and whether the offline kit has it."""
    ctx = _ctx()
    step = "manifests | remote bases"
    if ctx.extra.get("source") is None:
        return ctx.phase.record("remotes", [skipped(BUILD, step, "no manifests (see the source step)")], "Remote bases")
    src = _source(ctx)
    entries, _ = kbuild.choose_entries(src, ctx.params.kubeflow.components, ctx.params.kubeflow.istio_owner)
    graph = remotes.walk_entries((src.root / "example").resolve(), entries)
    res = remotes.resolve(graph.remotes, src.kit)
    rows: list[StepResult] = []
    if src.kind == "git" and res.missing and ctx.apply:
        # online: fetch the remote bases once into a kit beside the clone, then build offline from it
        kit = src.root.parent / (src.root.name + "-kit")
        try:
            remotes.record(res.missing, kit)
        except remotes.RemoteError as e:
            return ctx.phase.record("remotes", [failed(BUILD, f"{step} | record", f"recording the kit failed: {e}")],
                                    "Remote bases")
        src.kit = kit
        src.digest = hashlib.sha256((src.digest + ksource.tree_sha256(kit / "remote")).encode()).hexdigest()
        rows.append(StepResult(BUILD, f"{step} | record", changed=True,
                               message=f"recorded {len(res.missing)} remote base(s) into the kit {kit}"))
        res = remotes.resolve(graph.remotes, src.kit)
    for r in graph.remotes:
        users = sorted({str(u.kustomization.relative_to(src.root)) for u in graph.uses if u.remote.url == r.url})
        if r.url in res.found:
            rows.append(StepResult(BUILD, f"{step} | {r.url}", message=f"resolved from the kit: {r.kit_path} "
                                   f"(named in {', '.join(users)})", data={"kit_path": r.kit_path}))
        else:
            rows.append(failed(BUILD, f"{step} | {r.url}",
                               f"missing from the offline kit: {r.url} (named in {', '.join(users)}); expected at "
                               f"KIT/{r.kit_path}; record it on a connected machine (record-kit.sh)",
                               data={"kit_path": r.kit_path, "record": r.record_commands("KIT")}))
    for path, what in graph.helm:
        rows.append(failed(BUILD, f"{step} | helm chart", f"{path}: helmCharts ({what}) need a chart repository"))
    if not rows:
        rows.append(StepResult(BUILD, step, message="no remote bases below the chosen components"))
    if src.kit is not None:
        used = {remotes.parse_remote(r.url).repo_root for r in graph.remotes}
        kit_entries = sorted({str(p.relative_to(src.kit)) for p in (src.kit / "remote").glob("*/*/*")
                              if p.is_dir() or p.is_file()})
        unused = [k for k in kit_entries if not any(u.startswith(k) or k.startswith(u) for u in used)]
        if unused:
            ctx.phase.note(f"offline kit entries not needed by these components: {', '.join(unused)}")
    missing = [r.url for r in res.missing]
    if missing:
        where = _save(ctx, "record-kit.sh", "# run on a connected machine; KIT is the folder holding remote/\n"
                      "set -euo pipefail\nKIT=${KIT:?set KIT to the offline kit folder}\n"
                      + "\n".join(remotes.record_plan(res.missing, "$KIT")) + "\n")
        print(f"{len(missing)} remote base(s) missing from the kit" + (f"; commands to record them: {where}" if where
              else "") + "\n" + "\n".join(remotes.record_plan(res.missing, "$KIT")))
        ctx.phase.note("the offline kit lacks remote bases of the chosen components; the entries that need them "
                       "are left out of the build: " + ", ".join(missing))
    return ctx.phase.record("remotes", rows, "Remote bases")


# -- 3. build ----------------------------------------------------------------------------------------
def build() -> Table:
    """Build the chosen components offline (kustomize with the network closed), with the pull
    policy and image patches; cached per bundle, components and options."""
    ctx = _ctx()
    step = "manifests | build"
    if ctx.extra.get("source") is None:
        return ctx.phase.record("build", [skipped(BUILD, step, "no manifests (see the source step)")], "Build")
    src = _source(ctx)
    opts = _options(ctx)
    t0 = time.monotonic()
    try:
        res = kbuild.build(src, opts)
    except kbuild.BuildError as e:
        ctx.extra.pop("build", None)
        return ctx.phase.record("build", [failed(BUILD, step, str(e))], "Build")
    ctx.extra["build"] = res
    rows: list[StepResult] = []
    for e in res.entries:
        rows.append(StepResult(BUILD, f"{step} | {e}", message="built"))
    for e, why in res.left_out.items():
        lacks_remote = "offline kit lacks" in why
        rows.append(failed(BUILD, f"{step} | {e}", f"left out: {why}") if lacks_remote
                    else StepResult(BUILD, f"{step} | {e}", skipped=True, message=f"left out: {why}"))
    kinds = res.kinds()
    d = res.durations
    rows.append(StepResult(BUILD, f"{step} | output", duration=time.monotonic() - t0,
                           message=(f"{len(res.objects)} objects ({kinds.get('CustomResourceDefinition', 0)} CRDs, "
                                    f"{kinds.get('Deployment', 0)} Deployments, {kinds.get('StatefulSet', 0)} "
                                    f"StatefulSets), {len(res.inventory.full)} images; "
                                    + (f"cached ({d.get('cache_read', 0)} s)" if res.cached else
                                       f"kustomize {d.get('base', d.get('base_cached', 0))} s + "
                                       f"{d.get('final', 0)} s, {d.get('total', 0)} s in all")
                                    + f"; {res.kustomize_version}; build folder {res.build_dir / 'tree' / kbuild.BUILD_DIR}"),
                           data={"durations": d, "kinds": kinds, "patches": res.patches,
                                 "warnings": len(res.warnings)}))
    if res.warnings:
        ctx.phase.note(f"kustomize printed {len(res.warnings)} deprecation warning(s) (vars, patchesStrategicMerge...); "
                       "the build succeeded")
    if opts.lab_without_webhooks and res.patches.get("lab_webhooks_left_out"):
        ctx.phase.note(f"lab (KWOK): {res.patches['lab_webhooks_left_out']} webhook configuration(s) left out of the lab "
                       "build (and CRD conversion webhooks turned off): their backends are simulated pods that never "
                       "answer (the lab's API server reaches no Service), so pod creation would fail or wait on "
                       "them. A real cluster gets them unchanged; the retry path for a webhook whose backend comes "
                       "up late is tested on the lab with a loopback backend")
    comps = ctx.params.kubeflow.components
    if comps == "default" and not any("training-operator" in e for e in res.entries):
        ctx.phase.note("the release's default set leaves the v1 Training Operator (PyTorchJob, TFJob) commented out; "
                       "phase 60's PyTorchJob and TFJob checks need it: use components: training-only, or add it")
    if _kwok(ctx) and any("training-operator" in e for e in res.entries):
        ctx.phase.note("lab (KWOK): the training-operator Deployment runs as a simulated pod; PyTorchJobs in phase 60 "
                       "are reconciled by the lab's out-of-cluster training operator (mlplat lab), which stands in "
                       "for it. On a real cluster the Deployment kubeflow/training-operator does that work")
    _save(ctx, "kubeflow.yaml", res.yaml_text)
    return ctx.phase.record("build", rows, "Build")


def _build(ctx):
    res = ctx.extra.get("build")
    if res is None:
        raise common.SetupFirst("no build: run the 'Build' cell first (and fix what it reported)")
    return res


# -- 4. images --------------------------------------------------------------------------------------
def images() -> Table:
    """The image inventory of the build: every image, where it is named, how it is pinned."""
    ctx = _ctx()
    if ctx.extra.get("build") is None:
        ctx.phase.record("images", [skipped(BUILD, "images | inventory", "no build")], "Images")
        return Table(pd.DataFrame(), "Image inventory (no build)")
    res = _build(ctx)
    inv = res.base_inventory
    regs = inv.registries()
    rows = [StepResult(BUILD, "images | inventory",
                       message=f"{len(inv.full)} images from {len(regs)} registries ("
                       + ", ".join(f"{k} {v}" for k, v in regs.items()) + f"); {len(inv.uses)} places name them",
                       data={"images": inv.full, "registries": regs})]
    ctx.phase.record("images", rows)
    _save(ctx, "images.json", json.dumps([u.to_dict() for u in inv.uses], indent=1))
    _save(ctx, "images.txt", "\n".join(inv.full) + "\n")
    return inv.table(f"Image inventory: {len(inv.full)} images")


# -- 5. mirror plan --------------------------------------------------------------------------------
def mirror_plan() -> Table:
    """The mirror plan: copy into the private registry, or pull/tag/save and import on every node
    (skipping images a node already holds); in apply mode, node imports run with progress."""
    ctx = _ctx()
    kf = ctx.params.kubeflow
    mode = kf.image_mirror.mode
    step = f"images | mirror plan ({mode})"
    if ctx.extra.get("build") is None:
        return ctx.phase.record("mirror", [skipped(BUILD, step, "no build")], "Mirror plan")
    res = _build(ctx)
    inv = res.base_inventory
    if mode == "none":
        return ctx.phase.record("mirror", [skipped(BUILD, step, "kubeflow.image_mirror.mode is none: nodes pull from "
                                                   "the source registries")], "Mirror plan")
    if mode == "registry":
        plan = mirror.registry_plan(inv, kf.image_mirror.registry)
        where = _save(ctx, "mirror-registry.sh", plan.text())
        ctx.extra["mirror_text"] = plan.text()
        rows = [StepResult(BUILD, step, message=f"{len(plan.rows)} images to copy into {plan.registry} "
                           f"(skopeo, on a machine that reaches both); the build names them there through "
                           f"{res.patches.get('mirror_images', 0)} kustomize images: entries and "
                           f"{res.patches.get('mirror_fields', 0) + res.patches.get('mirror_text', 0)} patched fields"
                           + (f"; commands in {where}" if where else ""), data={"rows": plan.rows})]
        return ctx.phase.record("mirror", rows, "Mirror plan")
    # node-import
    archive_dir = kf.image_mirror.archive_dir or "/var/tmp/mlplat-image-archives"
    hosts = [h.name for h in ctx.params.hosts]
    present: dict[str, set[str]] = {}
    probe_rows: list[StepResult] = []
    if _kwok(ctx):
        probe_rows = [skipped(h, "images | probe", "lab (KWOK): the lab hosts run no containerd and KWOK nodes pull "
                              "nothing; the plan is shown for every host as if none were present") for h in hosts]
        present = None  # type: ignore[assignment]
    else:
        from ..hosts import HostPool

        from ..images import preload

        pool = ctx.extra.get("pool") or HostPool(ctx.params)
        ctx.extra["pool"] = pool
        present, probe_rows = preload.probe(pool, "images | probe")
    plan = mirror.node_import_plan(inv, hosts, archive_dir, present=present or None,
                                   pull_from=kf.image_mirror.registry)
    addresses = {h.name: h.address for h in ctx.params.hosts}
    where = _save(ctx, "mirror-node-import.sh", plan.text(addresses, ctx.params.ssh.user))
    ctx.extra["mirror_text"] = plan.text(addresses, ctx.params.ssh.user)
    ctx.extra["import_plan"] = plan
    rows = list(probe_rows)
    for h in plan.hosts:
        rows.append(StepResult(h.host, step, message=f"{len(h.to_import)} to import, {len(h.present)} already present"
                               + ("" if h.probed else " (not probed)") + (f"; commands in {where}" if where else "")))
    if ctx.apply and not _kwok(ctx):
        rows += _import(ctx, plan, present)
    return ctx.phase.record("mirror", rows, "Mirror plan")


def _import(ctx, plan: mirror.ImportPlan, present: dict[str, set[str]]) -> list[StepResult]:
    """Import each host's missing images (mlplat.images.preload: the same code phase 30 uses for the
    site's image kit), hosts in parallel, with progress."""
    from ..images import preload

    archives = {r.full: Path(plan.archive_dir) / mirror.archive_name(r) for r in plan.images}
    return preload.import_missing(ctx.extra["pool"], archives, present, "images | import", plan.platform)


# -- 6. pull policy -------------------------------------------------------------------------------
def pull_policy() -> Table:
    """``imagePullPolicy: Always`` (and floating tags without a policy) rewritten to IfNotPresent by
    kustomize patches; none may remain in the build."""
    ctx = _ctx()
    step = "manifests | pull policy"
    if ctx.extra.get("build") is None:
        return ctx.phase.record("pull_policy", [skipped(BUILD, step, "no build")], "Pull policy")
    res = _build(ctx)
    before = pull_policy_findings(res.base_objects)
    after = pull_policy_findings(res.objects)
    rows = [StepResult(BUILD, step, ok=not after,
                       message=(f"{len(before)} container(s) or template(s) pulled on every start; "
                                f"{res.patches.get('pull_policy', 0)} patched to IfNotPresent; {len(after)} left")
                       + ("" if not after else ": " + "; ".join(f"{f['kind']} {f['name']} ({f['why']})" for f in after[:5])),
                       data={"before": [f"{f['kind']} {f['namespace']}/{f['name']}: {f['why']}" for f in before]})]
    return ctx.phase.record("pull_policy", rows, "Pull policy")


# -- 7. pull check ----------------------------------------------------------------------------------
def pull_check() -> Table:
    """Images the nodes would still pull from a registry they cannot reach."""
    ctx = _ctx()
    kf = ctx.params.kubeflow
    step = "images | unreachable registries"
    if ctx.extra.get("build") is None:
        return ctx.phase.record("pull_check", [skipped(BUILD, step, "no build")], "Pull check")
    res = _build(ctx)
    mode = kf.image_mirror.mode
    offline = kf.source == "offline"
    preloaded = None
    reachable: set[str] | None
    if mode == "registry":
        reachable = {kf.image_mirror.registry.split("/", 1)[0]}
    elif offline:
        reachable = set()
    else:
        reachable = None  # online: every registry assumed reachable; only pull policies are checked
    if mode == "node-import":
        plan = ctx.extra.get("import_plan")
        if plan is not None:
            preloaded = {h.host: {r.full for r in plan.images} for h in plan.hosts}
    findings = mirror.pull_check(res.inventory, res.objects, reachable=reachable, preloaded=preloaded,
                                 hosts=[h.name for h in ctx.params.hosts])
    rows: list[StepResult] = []
    kwok = _kwok(ctx)
    for f in findings:
        msg = f"{f['image']}: {f['problem']} ({f['where']})"
        rows.append(StepResult(BUILD, step, ok=kwok, message=("lab (KWOK) pulls nothing; a real site would: " + msg)
                               if kwok else msg))
    if not findings:
        rows.append(StepResult(BUILD, step, message=f"every image of the build is reachable ({mode}"
                               + (f" -> {kf.image_mirror.registry}" if mode == "registry" else "")
                               + ("" if offline else ", online source") + ") and none pulls on every start"))
    elif kwok:
        ctx.phase.note(f"lab (KWOK): {len(findings)} image(s) would be pulled from unreachable registries on a real "
                       "air-gapped site; set kubeflow.image_mirror.mode to registry or node-import there")
    elif mode == "none":
        ctx.phase.note("set kubeflow.image_mirror.mode to registry (a private registry) or node-import "
                       "(preload every node) for an air-gapped site")
    _save(ctx, "pull-check.json", json.dumps(findings, indent=1))
    return ctx.phase.record("pull_check", rows, "Pull check")


# -- 8. Istio ---------------------------------------------------------------------------------------
def istio() -> Table:
    """Istio ownership: left out of the build when phase 40 installed it, and versions compared."""
    ctx = _ctx()
    kf = ctx.params.kubeflow
    step = "istio | ownership and versions"
    if ctx.extra.get("source") is None:
        return ctx.phase.record("istio", [skipped(BUILD, step, "no manifests")], "Istio")
    src = _source(ctx)
    want = ctx.params.versions.istio
    res = ctx.extra.get("build")
    if res is not None and any(o.get("kind") == "Deployment" and o["metadata"].get("name") == "istiod"
                               for o in res.objects):
        bundled = install.istio_images(res.objects)
    else:
        # Istio is not in this build: build the bundle's own Istio (offline, a few seconds) to compare
        try:
            bundled = install.istio_images(kbuild.load_all(kbuild.run_kustomize(
                src.root / kbuild.ISTIO_INSTALL_PREFIX.replace("../", "") / "overlays" / "oauth2-proxy")[0]))
        except (kbuild.BuildError, OSError) as e:
            bundled = {}
            ctx.phase.note(f"could not build the bundle's Istio to compare versions: {e}")
    pilot = sorted(bundled.get("pilot", set()))
    sidecar = sorted(bundled.get("sidecar (injector values)", set()))
    rows: list[StepResult] = []
    if not pilot:
        rows.append(StepResult(BUILD, f"{step} | bundle", message="no Istio images found in the bundle"))
    else:
        same_minor = all(p.split(".")[:2] == want.split(".")[:2] for p in pilot)
        same = pilot == [want]
        rows.append(StepResult(BUILD, f"{step} | bundle", ok=same_minor,
                               message=f"the bundle's Istio images are {', '.join(pilot)}; versions.istio is {want}"
                               + ("" if same else "; only the patch release differs: Kubeflow's manifests install "
                                  f"{pilot[0]}, set versions.istio to match" if same_minor else
                                  ": Kubeflow is validated with the Istio it bundles; set "
                                  f"versions.istio to {pilot[0]} (and let phase 40 install that)")))
        if sidecar and sidecar != pilot:
            ctx.phase.note(f"the bundle's istio-sidecar-injector values say tag {', '.join(sidecar)} while its images "
                           f"are {', '.join(pilot)}: injected sidecars would be proxyv2:{sidecar[0]}; the image "
                           "inventory and mirror plans include it")
    owner_row = StepResult(BUILD, f"{step} | owner",
                           message=("phase 40 owns Istio: istio-crds, istio-namespace and istio-install are left out "
                                    "of the build" if kf.istio_owner == "phase40" else
                                    "Kubeflow installs its bundled Istio (kubeflow.istio_owner: kubeflow)"))
    rows.append(owner_row)
    kube = _kube(ctx)
    if kube is not None:
        try:
            live = install.live_istio(kube)
        except Exception as e:
            live = {"error": str(e)}
        res = ctx.extra.get("build")
        needs_istio = res is not None and any(o.get("apiVersion", "").split("/")[0].endswith("istio.io")
                                              for o in res.objects)
        if live is None:
            bad = kf.istio_owner == "phase40" and needs_istio
            rows.append(StepResult(CLUSTER, f"{step} | live", ok=not bad or not ctx.apply,
                                   message="no istiod in istio-system" + (
                                       ": these components create Istio objects; run 40_istio first" if bad else
                                       "" if kf.istio_owner == "kubeflow" else " (these components do not need it)")))
        elif "error" in live:
            rows.append(failed(CLUSTER, f"{step} | live", f"cannot read istiod: {live['error']}"))
        else:
            match = not pilot or live["tag"] in pilot
            rows.append(StepResult(CLUSTER, f"{step} | live", ok=match or kf.istio_owner == "kubeflow",
                                   message=f"istiod runs {live['image']}" + ("" if match else
                                   f", the bundle expects {', '.join(pilot)}: install the matching Istio in phase 40")))
    return ctx.phase.record("istio", rows, "Istio")


# -- 9. apply -----------------------------------------------------------------------------------------
def _kube(ctx):
    """The cluster connection (common.kube: kubernetes.existing_kubeconfig, else the kubeconfig
    30_kubernetes fetched), or None while there is none (reason in extra["kube_error"])."""
    return common.kube(ctx)


def apply() -> Table:
    """Apply: namespaces and CRDs first, then the rest, then webhooks, server-side, retrying
    temporary failures (webhooks and CRDs coming up) in bounded rounds. Plan mode: a server-side
    dry run against the cluster when one is given; nothing is written."""
    ctx = _ctx()
    step = "kubeflow | apply" if ctx.apply else "kubeflow | server-side dry run"
    if ctx.extra.get("build") is None:
        ctx.phase.record("apply", [skipped(CLUSTER, step, "no build")])
        return results_table([], "Apply (no build)")
    res = _build(ctx)
    kube = _kube(ctx)
    if kube is None:
        why = ctx.extra.get("kube_error", "no kubeconfig")
        r = (skipped(CLUSTER, step, f"no cluster yet: {why}") if not ctx.apply
             else failed(CLUSTER, step, f"no cluster to apply to: {why}"))
        ctx.phase.record("apply", [r])
        return results_table([r], "Apply")
    notes: list[str] = []
    results, summary = install.apply_rounds(kube, res.objects, dry_run=not ctx.apply,
                                            timeout=ctx.params.kubeflow.apply_timeout,
                                            field_manager=ctx.params.kubernetes.field_manager, note=notes.append)
    ctx.extra["apply_summary"] = summary
    ctx.phase.record("apply", results)
    return _apply_table(results, summary, notes, ctx.apply)


def _apply_table(results: list[StepResult], summary: dict, notes: list[str], applied: bool) -> Table:
    counts: dict[str, int] = {}
    for r in results:
        a = r.data.get("action") or r.status
        counts[a] = counts.get(a, 0) + 1
    retried = sum(1 for r in results if r.data.get("retries"))
    rows = [{"what": k, "objects": v} for k, v in sorted(counts.items())]
    rows.append({"what": "objects retried (temporary errors)", "objects": retried})
    rows.append({"what": f"rounds ({summary['seconds']} s)", "objects": summary["rounds"]})
    frame = pd.DataFrame(rows)
    fails = [r for r in results if not r.ok]
    title = (f"{'Apply' if applied else 'Server-side dry run'}: {len(results)} objects, "
             f"{sum(1 for r in results if r.changed)} {'changed' if applied else 'would change'}, {len(fails)} failed")
    table = Table(frame, title, status_col=None)
    if fails:
        from IPython.display import display

        display(table)
        return results_table(fails, "Failures")
    return table


# -- 10. verify -------------------------------------------------------------------------------------
def verify() -> Table:
    """Every Deployment available and every StatefulSet ready (KWOK marks lab pods ready)."""
    ctx = _ctx()
    step = "verify | workloads"
    res = ctx.extra.get("build")
    kube = ctx.extra.get("kube")
    if not ctx.apply or res is None or kube is None:
        why = "plan mode" if not ctx.apply else "nothing was applied"
        r = skipped(CLUSTER, step, why)
        ctx.phase.record("verify", [r])
        return results_table([r], "Workloads")
    blocked = install.storage_blockers(kube, res.objects)
    rows = install.verify_workloads(kube, res.objects, timeout=ctx.params.kubeflow.apply_timeout, blocked=blocked)
    if _kwok(ctx):
        for i, r in enumerate(rows):
            if r.data.get("blocked"):
                rows[i] = skipped(r.host, r.step, f"lab (KWOK) has no storage provisioner: {r.data['blocked']}")
    ctx.phase.record("verify", rows)
    ok = sum(1 for r in rows if r.ok)
    bad = [r for r in rows if not r.ok]
    return results_table(bad, f"Workloads: {ok}/{len(rows)} available") if bad else \
        Table(pd.DataFrame([{"workloads": len(rows), "available": ok}]), f"Workloads: {ok}/{len(rows)} available",
              status_col=None)


# -- 11. dashboard ------------------------------------------------------------------------------------
def dashboard() -> Table:
    """How to reach the central dashboard."""
    ctx = _ctx()
    res = ctx.extra.get("build")
    text = install.dashboard_text(res.objects, ctx.params.kubeflow.istio_owner) if res else "no build"
    print(text)
    r = StepResult(CLUSTER, "kubeflow | dashboard", message=text)
    ctx.phase.record("dashboard", [r])
    return results_table([r], "Dashboard")


def finish() -> Table:
    """Close the phase: writes the verdict JSON and fails the notebook when a step failed."""
    ctx = _ctx()
    pool = ctx.extra.get("pool")
    if pool is not None:
        pool.close()
    kube = ctx.extra.get("kube")
    if kube is not None:
        kube.close()
    return common.finish(NUMBER)
