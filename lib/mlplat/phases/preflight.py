"""Phase 00, preflight: params valid, every host reachable with sudo, facts gathered and compared
with what the params expect, and the chosen version stack checked. Read-only on every host.
"""

from __future__ import annotations

import time

from ..hosts import HostPool
from ..hosts.facts import facts_table, gather_facts
from ..params.versions import check_stack, kubeadm_api_versions, minor, PAUSE_IMAGE
from ..report import StepResult, Table, failed
from . import common

NUMBER, NAME = "00", "preflight"


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", **_ignored) -> Table:
    """Load and validate the params; show what this run uses. Preflight is read-only in both modes."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir)
    ctx.extra["pool"] = HostPool(ctx.params)
    return common.header_table(ctx)


def _ctx():
    return common.context(NUMBER)


def validate() -> Table:
    """Params validation (done by setup) and the version-compatibility verdict, one row per check."""
    ctx = _ctx()
    v = ctx.params.versions.model_dump()
    t0 = time.monotonic()
    incompatible = check_stack(v)
    rows: list[StepResult] = [StepResult(host="(params)", step="params | validate",
                                         message=f"{ctx.params_path.name}: {len(ctx.params.hosts)} host(s), no problems")]
    for inc in incompatible:
        rows.append(failed("(params)", "versions | compatibility", f"{inc.path}: {inc.message}; fix: {inc.fix}"))
    if not incompatible:
        k8s = minor(v["kubernetes"])
        rows.append(StepResult(
            host="(params)", step="versions | compatibility",
            message=(f"Kubernetes {v['kubernetes']} (kubeadm {kubeadm_api_versions(k8s)[0].split('/')[1]}, "
                     f"pause {PAUSE_IMAGE.get(k8s, '?')}), Istio {v['istio']}, Kubeflow {v['kubeflow']}, "
                     f"driver R{v['nvidia_driver']} with CUDA {v['cuda']}, containerd {v['containerd']} with "
                     f"toolkit {v['nvidia_container_toolkit']}: compatible")))
    for r in rows:
        r.duration = time.monotonic() - t0
    return ctx.phase.record("validate", rows, "Params and version compatibility")


def reachability() -> Table:
    """SSH to every host in parallel, then sudo; one dead host never stalls the others."""
    ctx = _ctx()
    pool: HostPool = ctx.extra["pool"]
    results = pool.sh("id -un; id -u", step="ssh+sudo | reach", sudo=True)
    for r in results:
        if r.ok:
            out = (r.data.get("stdout") or "").split()
            if out[-1:] != ["0"]:
                r.ok = False
                r.message = f"sudo did not give root (uid {out[-1] if out else '?'})"
            else:
                r.message = f"ssh as {ctx.params.host(r.host).ssh.user or ctx.params.ssh.user}, sudo ok"
    ctx.extra["reachable"] = {r.host for r in results if r.ok}
    return ctx.phase.record("reachability", results, "SSH and sudo")


def facts() -> Table:
    """Facts per reachable host (OS, kernel, CPU, memory, disks, NICs, GPUs) as one table."""
    ctx = _ctx()
    pool: HostPool = ctx.extra["pool"]
    reachable = ctx.extra.get("reachable")
    hosts = [h.name for h in ctx.params.hosts if reachable is None or h.name in reachable]
    results = gather_facts(pool, hosts=hosts) if hosts else []
    ctx.extra["facts"] = {r.host: r.data for r in results if r.ok}
    ctx.phase.record("facts", results)
    return facts_table(results)


def compare() -> Table:
    """Facts against the params: GPU counts, OS family and version, hostname, addresses."""
    ctx = _ctx()
    p = ctx.params
    found = ctx.extra.get("facts", {})
    rows: list[StepResult] = []
    for h in p.hosts:
        f = found.get(h.name)
        step = "facts | compare with params"
        if f is None:
            rows.append(failed(h.name, step, "no facts: host unreachable (see the SSH and sudo table)"))
            continue
        problems, notes = [], []
        gpus = int(f.get("gpu_count") or 0)
        if gpus != h.gpus:
            problems.append(f"params expect {h.gpus} GPU(s), host shows {gpus}")
        fam = f.get("os_family")
        if fam and fam != p.os.family:
            problems.append(f"params say OS family {p.os.family}, host runs {f.get('os_pretty') or fam}")
        elif f.get("os_id") and (f.get("os_id"), str(f.get("os_version", "")).split(".")[0]) != \
                (p.os.distro, p.os.version.split(".")[0]):
            notes.append(f"OS drift: params {p.os.distro} {p.os.version}, host {f.get('os_pretty')}")
        if f.get("hostname") and f["hostname"] != h.name:
            notes.append(f"hostname is {f['hostname']!r}, params name {h.name!r}")
        addrs = {a.split("/")[0] for n in f.get("nics", []) for a in n.get("addresses", [])}
        if h.static_address and h.static_address.split("/")[0] not in addrs:
            notes.append(f"static address {h.static_address} not configured yet (phase 10 sets it)")
        msg = "; ".join(problems + notes) or f"matches params ({gpus} GPU(s), {f.get('os_pretty')})"
        rows.append(StepResult(host=h.name, step=step, ok=not problems, message=msg))
    if p.lab is not None:
        ctx.phase.note("lab hosts have no GPUs: GPU expectations come from the lab params (0 per host), "
                       "so GPU, driver and container-runtime checks are proven in plan mode only")
    return ctx.phase.record("compare", rows, "Facts against params")


def finish() -> None:
    """Close the phase: writes the verdict JSON and fails the notebook when a host failed."""
    ctx = _ctx()
    pool = ctx.extra.get("pool")
    if pool is not None:
        pool.close()
    common.finish(NUMBER)
