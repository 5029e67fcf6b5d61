"""Apply benchmark: mlplat's server-side apply vs ``kubectl apply --server-side``, and how fast the
waits notice readiness, on one lab cluster, in one run.

    python benchmarks/apply.py --out outputs/apply.json [--reps 3] [--state-dir DIR] [--kubeconfig PATH]

Starts a lab cluster (``mlplat.lab.cluster.up``: real etcd, kube-apiserver, controller manager and
scheduler; KWOK nodes), unless --kubeconfig names a running one, and builds the offline bundle's
Kubeflow training operator and Istio (Kubeflow 26.03's Istio, its CRDs and namespaces, Istio's
Kiali/Grafana/Prometheus/Jaeger addons) with ``kubectl kustomize``. Then, interleaved rep by rep
(kubectl, mlplat, mlplat, kubectl, ...), each from a clean cluster (every object deleted and its
deletion waited for between runs, then --settle seconds for the API server's background work; not
timed):

- **kubectl**: ``kubectl apply --server-side --force-conflicts`` of the namespaces and CRDs,
  ``kubectl wait --for=condition=Established`` on the CRDs, then ``kubectl apply --server-side``
  of everything else: the fastest correct way with kubectl (one apply of everything fails on the
  custom resources: "ensure CRDs are installed first"). A fresh ``--cache-dir`` per run, so its
  discovery is as cold as mlplat's (a new client per run).
- **mlplat**: ``mlplat.kube.apply`` of the same objects (a new client, discovery, CRDs and
  namespaces first, CRDs waited for, the rest in parallel, webhooks last).
- the same again right after, on the applied state (the idempotent re-apply), for both.

Readiness latency: for Deployments (Available), Jobs (Complete, with the pod finishing after 2 s
under KWOK) and CRDs (Established), ``wait_for`` runs while a parallel thread polls the object every
10 ms; latency = when ``wait_for`` returned minus when the poll first saw the condition hold (a
negative figure means the watch saw it before the poll did). Targets: ratio mlplat/kubectl <= 1.0,
latency < 1 s.

Prints the figures and writes them, with the machine's CPU count and load averages, to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from mlplat.kube import apply, client_from, kubectl_binary, kustomize, load_manifests, summary, wait_for
from mlplat.kube.discovery import NoKindMatch
from mlplat.kube.manifests import tier
from mlplat.kube.wait import checker

TARGET_RATIO = 1.0
TARGET_LATENCY_S = 1.0

TRAINING_OPERATOR = ["common/kubeflow-namespace/base", "applications/training-operator/upstream/overlays/kubeflow"]
ISTIO = ["common/istio/istio-crds/base", "common/istio/istio-namespace/base",
         "common/istio/istio-install/overlays/oauth2-proxy"]


def shared_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    p = Path(os.environ.get("MLPLAT_SHARED") or root.parent / "shared")
    if not (p / "fixtures" / "offline-bundle").is_dir():
        raise SystemExit(f"offline bundle not found under {p}: set MLPLAT_SHARED")
    return p


def build_manifests(shared: Path, work: Path) -> str:
    with tarfile.open(shared / "fixtures/offline-bundle/kubeflow-manifests-26.03.tar.gz") as t:
        t.extractall(work, filter="data")
    root = work / "kubeflow-manifests-26.03"
    docs = [kustomize(root / p) for p in TRAINING_OPERATOR + ISTIO]
    docs += [p.read_text() for p in sorted((shared / "fixtures/offline-bundle/istio-1.28.0-addons").glob("*.yaml"))]
    return "\n---\n".join(docs)


# -- the two ways of applying ----------------------------------------------------------------
def run_kubectl(kubeconfig: Path, first: Path, rest: Path, crds: list[str], cache: Path) -> float:
    exe = kubectl_binary()
    base = [exe, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]
    ssa = ["apply", "--server-side", "--force-conflicts", "--field-manager=kubectl-bench"]
    t0 = time.perf_counter()
    for cmd in ([*base, *ssa, "-f", str(first)],
                [*base, "wait", "--for=condition=Established", "--timeout=120s", *[f"crd/{c}" for c in crds]],
                [*base, *ssa, "-f", str(rest)]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise SystemExit(f"kubectl failed: {' '.join(cmd[3:6])}...: {p.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def run_mlplat(kubeconfig: Path, objs: list[dict]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    kube = client_from(str(kubeconfig))
    results = apply(kube, objs, field_manager="mlplat-bench", progress=False, note=lambda m: None)
    elapsed = time.perf_counter() - t0
    kube.close()
    bad = [r.message for r in results if not r.ok]
    if bad:
        raise SystemExit("mlplat apply failed: " + "; ".join(bad[:5]))
    return elapsed, summary(results)


def clean(kubeconfig: Path, objs: list[dict]) -> float:
    """Delete every object (custom resources first, CRDs and namespaces last) and wait until gone."""
    t0 = time.perf_counter()
    kube = client_from(str(kubeconfig))
    for o in sorted(objs, key=lambda o: o["kind"] in ("Namespace", "CustomResourceDefinition")):
        try:
            res = kube.discovery.resolve(o["apiVersion"], o["kind"])
        except NoKindMatch:
            continue
        kube.delete(res, o["metadata"]["name"], o["metadata"].get("namespace") if res.namespaced else None)
    nss = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    crds = [o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"]
    wait_for(kube, "Namespace", nss, condition="Deleted", timeout=600, api_version="v1", progress=False)
    wait_for(kube, "CustomResourceDefinition", crds, condition="Deleted", timeout=120, progress=False)
    # Cluster-scoped leftovers (ClusterRoles, webhooks) were deleted above; nothing else to wait for.
    kube.close()
    return time.perf_counter() - t0


# -- readiness latency -----------------------------------------------------------------------
def _latency(kube, kind: str, name: str, ns: str | None, create, condition=None, timeout=60.0) -> dict:
    res = kube.resource(kind)
    _, check = checker(res.kind, condition)
    seen: list[float] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            o = kube.get_or_none(res.path(ns, name))
            try:
                if o is not None and check(o)[0]:
                    seen.append(time.monotonic())
                    return
            except Exception:  # noqa: BLE001 - a terminal state: stop polling
                return
            time.sleep(0.01)

    create()
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.monotonic()
    wait_for(kube, kind, name, ns, condition=condition, timeout=timeout, progress=False)
    returned = time.monotonic()
    th.join(5)
    stop.set()
    if not seen:
        return {"kind": kind, "name": name, "latency_s": None, "waited_s": round(returned - t0, 3)}
    return {"kind": kind, "name": name, "latency_s": round(returned - seen[0], 4), "waited_s": round(returned - t0, 3)}


def measure_latency(kubeconfig: Path, reps: int) -> list[dict]:
    kube = client_from(str(kubeconfig))
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    apply(kube, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}], progress=False)
    out = []
    for i in range(reps):
        dname, jname, cname = f"dep-{i}", f"job-{i}", f"gadgets{i}.b{ns.split('-')[1]}.mlplat.io"
        dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": dname, "namespace": ns},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": dname}},
                        "template": {"metadata": {"labels": {"app": dname}},
                                     "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": jname, "namespace": ns},
               "spec": {"template": {"metadata": {"annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "2s"}},
                                     "spec": {"restartPolicy": "Never",
                                              "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
        group = cname.split(".", 1)[1]
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": cname},
               "spec": {"group": group, "scope": "Namespaced",
                        "names": {"plural": f"gadgets{i}", "kind": f"Gadget{i}"},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
        for kind, name, nsp, obj in (("Deployment", dname, ns, dep), ("Job", jname, ns, job),
                                     ("CustomResourceDefinition", cname, None, crd)):
            out.append(_latency(kube, kind, name, nsp, lambda o=obj: apply(kube, [o], progress=False, wait_crds=False)))
    kube.delete(kube.resource("Namespace"), ns)
    for r in out:
        if r["kind"] == "CustomResourceDefinition":
            kube.delete(kube.resource("CustomResourceDefinition"), r["name"])
    kube.close()
    return out


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--reps", type=int, default=3, help="applies per method (interleaved)")
    ap.add_argument("--latency-reps", type=int, default=5, help="objects per kind for the latency figures")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to let the API server finish the last clean-up (CRD removal rebuilds its "
                         "OpenAPI) before a timed apply")
    ap.add_argument("--state-dir", help="lab cluster state directory (default: a temporary one, removed)")
    ap.add_argument("--kubeconfig", help="use this running cluster instead of starting a lab cluster")
    args = ap.parse_args(argv)

    shared = shared_dir()
    work = Path(tempfile.mkdtemp(prefix="mlplat-apply-bench-"))
    started = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        from mlplat.lab import cluster

        state = Path(args.state_dir) if args.state_dir else work / "lab"
        nodes = [{"name": "bench-cp", "gpus": 0, "roles": ["control-plane"]},
                 {"name": "bench-gpu1", "gpus": 8, "roles": ["worker"]},
                 {"name": "bench-gpu2", "gpus": 8, "roles": ["worker"]}]
        t0 = time.perf_counter()
        cluster.up(state, state / "kubeconfig", nodes, progress=lambda s: None)
        print(f"lab cluster up in {time.perf_counter() - t0:.1f} s")
        kubeconfig, started = state / "kubeconfig", state
    try:
        text = build_manifests(shared, work)
        objs = load_manifests(text)
        first = [o for o in objs if tier(o) == 0]
        rest = [o for o in objs if tier(o) != 0]
        crds = [o["metadata"]["name"] for o in first if o["kind"] == "CustomResourceDefinition"]
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        (work / "first.yaml").write_text(yaml.dump_all(first, Dumper=dumper, allow_unicode=True))
        (work / "rest.yaml").write_text(yaml.dump_all(rest, Dumper=dumper, allow_unicode=True))
        kinds: dict[str, int] = {}
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        print(f"{len(objs)} objects ({len(crds)} CRDs, {len(first) - len(crds)} namespaces), "
              f"{len(text) / 1e6:.1f} MB of YAML; kubectl {kubectl_binary()}")

        runs: list[dict] = []
        order = []
        for i in range(args.reps):
            order += (["kubectl", "mlplat"] if i % 2 == 0 else ["mlplat", "kubectl"])
        for n, method in enumerate(order):
            cleaned = clean(kubeconfig, objs)
            time.sleep(args.settle)
            if method == "kubectl":
                cache = work / f"kubectl-cache-{n}"
                cold = run_kubectl(kubeconfig, work / "first.yaml", work / "rest.yaml", crds, cache)
                again = run_kubectl(kubeconfig, work / "first.yaml", work / "rest.yaml", crds, work / f"kubectl-cache-{n}b")
                counts = {}
            else:
                cold, counts = run_mlplat(kubeconfig, objs)
                again, counts_again = run_mlplat(kubeconfig, objs)
                if set(counts_again) != {"unchanged"}:
                    raise SystemExit(f"mlplat re-apply was not idempotent: {counts_again}")
            runs.append({"method": method, "apply_s": round(cold, 3), "reapply_s": round(again, 3),
                         "clean_s": round(cleaned, 1), "counts": counts})
            print(f"  {method:7s} apply {cold:6.2f} s   re-apply {again:6.2f} s   (clean before: {cleaned:.1f} s)")

        med = {m: statistics.median(r["apply_s"] for r in runs if r["method"] == m) for m in ("kubectl", "mlplat")}
        med_again = {m: statistics.median(r["reapply_s"] for r in runs if r["method"] == m) for m in ("kubectl", "mlplat")}
        ratio = med["mlplat"] / med["kubectl"]
        ratio_again = med_again["mlplat"] / med_again["kubectl"]

        latency = measure_latency(kubeconfig, args.latency_reps)
        by_kind: dict[str, dict] = {}
        for kind in sorted({r["kind"] for r in latency}):
            vals = [r["latency_s"] for r in latency if r["kind"] == kind and r["latency_s"] is not None]
            by_kind[kind] = {"n": len(vals), "median_s": round(statistics.median(vals), 4) if vals else None,
                             "max_s": round(max(vals), 4) if vals else None}
        worst = max((v["max_s"] for v in by_kind.values() if v["max_s"] is not None), default=None)

        print(f"\napply (median of {args.reps}):    kubectl {med['kubectl']:.2f} s   mlplat {med['mlplat']:.2f} s"
              f"   ratio mlplat/kubectl {ratio:.2f} (target <= {TARGET_RATIO})")
        print(f"re-apply (median of {args.reps}): kubectl {med_again['kubectl']:.2f} s   mlplat {med_again['mlplat']:.2f} s"
              f"   ratio {ratio_again:.2f}")
        print("readiness detection latency (wait_for return - first 10 ms poll that saw the condition):")
        for kind, v in by_kind.items():
            print(f"  {kind:26s} n={v['n']}  median {v['median_s']:+.3f} s  max {v['max_s']:+.3f} s")
        print(f"  worst {worst:+.3f} s (target < {TARGET_LATENCY_S} s)")

        report = {
            "objects": len(objs), "kinds": kinds, "crds": len(crds), "yaml_mb": round(len(text) / 1e6, 2),
            "kubectl": kubectl_binary(), "reps": args.reps, "runs": runs,
            "median_apply_s": med, "median_reapply_s": med_again,
            "ratio_mlplat_over_kubectl": round(ratio, 3), "ratio_reapply": round(ratio_again, 3),
            "target_ratio": TARGET_RATIO, "ratio_ok": ratio <= TARGET_RATIO,
            "latency": latency, "latency_by_kind": by_kind, "latency_worst_s": worst,
            "target_latency_s": TARGET_LATENCY_S, "latency_ok": worst is not None and worst < TARGET_LATENCY_S,
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version()},
        }
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.out}")
        return 0 if report["ratio_ok"] and report["latency_ok"] else 1
    finally:
        if started is not None and not args.state_dir:
            from mlplat.lab import cluster

            cluster.down(started, progress=lambda s: None)


if __name__ == "__main__":
    sys.exit(main())
