"""Phase 60 against a lab cluster of its own: 60_training_validation.ipynb run by papermill, the
PyTorchJobs and the TFJob reconciled by the real training operator into pods that KWOK runs to
completion, their logs (a real CPU run, served by the lab) parsed into tables and plots; a missed
threshold named in a failed verdict; the TrainJob checked by the API server against the Trainer v2
CRDs of the offline bundle. Tests run in file order: the first needs a cluster without the
training operator's CRDs, the TrainJob one applies the Trainer CRDs last."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from shared_kit import needs_offline_bundle

ROOT = Path(__file__).resolve().parents[2]
NB = ROOT / "notebooks" / "60_training_validation.ipynb"
STEM = "60_training_validation"
CPU_STATEMENT = "come from a CPU run"

pytestmark = [pytest.mark.lab_cluster]


_CRD_DIRS = ("/applications/training-operator/upstream/base/crds/", "/applications/trainer/upstream/base/crds/")
_CRD_TEXT: dict[str, bytes] = {}


def _bundle_docs(shared: Path, prefix: str) -> list[dict]:
    """CRDs out of the offline bundle's Kubeflow manifests (the tarball, read in place, once)."""
    import tarfile

    import yaml

    tgz = shared / "fixtures" / "offline-bundle" / "kubeflow-manifests-26.03.tar.gz"
    if not tgz.is_file():
        pytest.skip(f"offline bundle not found at {tgz}")
    if not _CRD_TEXT:
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".yaml") and any(d in m.name for d in _CRD_DIRS):
                    _CRD_TEXT[m.name] = tar.extractfile(m).read()
    return [yaml.safe_load(text) for name, text in sorted(_CRD_TEXT.items()) if prefix in name]


def run_notebook(params: Path, out_dir: Path, **parameters):
    """papermill run of the notebook; (verdict, executed notebook, papermill error or None)."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{STEM}.ipynb"
    err = None
    try:
        pm.execute_notebook(str(NB), str(out), parameters={"params_file": str(params), "run_dir": str(out_dir),
                                                           **parameters},
                            cwd=str(NB.parent), progress_bar=False, kernel_name="python3")
    except pm.PapermillExecutionError as e:
        err = e
    verdict = json.loads((out_dir / f"verdict-{STEM}.json").read_text())
    return verdict, nbformat.read(out, as_version=4), err


def outputs(nb, source: str) -> list[dict]:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source == source)
    return cell.outputs


def html_of(nb, source: str) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs(nb, source))


def served(kube, kind: str, api_version: str) -> bool:
    from mlplat.kube import NoKindMatch

    try:
        kube.discovery.resolve(api_version, kind)
        return True
    except NoKindMatch:
        return False


@pytest.mark.notebooks
@needs_offline_bundle
def test_plan_without_the_training_operator(validation_cluster, kube, tmp_path):
    """Plan mode on a cluster that serves no PyTorchJob yet (50_kubeflow not run): the jobs are
    checked against the offline bundle's CRDs, nothing is written, the plan passes, quickly."""
    if served(kube, "PyTorchJob", "kubeflow.org/v1"):
        pytest.skip("the training operator's CRDs are already applied in this session (test order changed)")
    t0 = time.monotonic()
    v, nb, err = run_notebook(validation_cluster.params_path, tmp_path, mode="plan")
    assert err is None and v["ok"], err
    assert time.monotonic() - t0 < 90
    rows = json.dumps(v)
    assert v["counts"]["failed"] == 0
    html = html_of(nb, "phase.jobs()")
    assert "is not served by this cluster yet" in html and "checked against the CRD of the Kubeflow 26.03 bundle" in html
    # Plan mode wrote nothing: neither the namespace nor the ConfigMap exists.
    assert kube.get_or_none("/api/v1/namespaces/mlplat-validation") is None, rows
    assert not served(kube, "PyTorchJob", "kubeflow.org/v1")


def _operator_crds(shared: Path) -> list[dict]:
    return _bundle_docs(shared, "/applications/training-operator/upstream/base/crds/kubeflow.org_")


def test_apply_without_a_running_operator_fails_fast(shared, validation_cluster, kube, monkeypatch):
    """The CRDs are there but no operator runs (50_kubeflow applied, its pod down): the first job
    fails as soon as nobody marks it Created, naming the operator; the next ones are not submitted."""
    from mlplat.kube import apply
    from mlplat.phases import training_validation as phase
    from mlplat.report import PhaseFailed

    if "training-operator" in {r["component"] for r in _status(validation_cluster) if r["ok"]}:
        pytest.skip("the training operator already runs in this session (test order changed)")
    crds = [d for d in _operator_crds(shared) if d["spec"]["names"]["kind"] in ("PyTorchJob", "TFJob")]
    res = apply(kube, crds, progress=False, note=lambda m: None)
    assert all(r.ok for r in res), [r.message for r in res if not r.ok]
    monkeypatch.setattr(phase, "PICKUP_S", 5.0)
    t0 = time.monotonic()
    phase.setup(params_file=str(validation_cluster.params_path), mode="apply")
    phase.inventory()
    phase.jobs()
    phase.bandwidth()
    phase.ddp()
    steps = phase._ctx().phase.steps
    assert not steps["bandwidth"][0].ok and "no controller picked it up" in steps["bandwidth"][0].message
    assert "training operator is not running" in steps["bandwidth"][0].message
    assert all("not submitted" in r.message for r in steps["ddp"]), [r.message for r in steps["ddp"]]
    assert time.monotonic() - t0 < 60
    phase.cleanup()
    with pytest.raises(PhaseFailed):
        phase.finish()
    assert kube.list(kube.resource("PyTorchJob", "kubeflow.org/v1"), "mlplat-validation") == []


def _status(c) -> list[dict]:
    from mlplat.lab import cluster

    return cluster.status(c.state)


@pytest.mark.notebooks
@pytest.mark.slow
def test_apply_runs_the_jobs_through_the_real_operator(validation_lab, kube, tmp_path):
    v, nb, err = run_notebook(validation_lab.params_path, tmp_path, mode="apply")
    assert err is None and v["ok"], err
    notes = " ".join(v["notes"])
    assert CPU_STATEMENT in notes and "not GPU performance" in notes
    # The verdict is saved with the steps' messages in the rendered notebook; read them back.
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    for job in ("PyTorchJob mlplat-allreduce Succeeded", "PyTorchJob mlplat-ddp-1n Succeeded",
                "PyTorchJob mlplat-ddp-2n Succeeded", "TFJob mlplat-tf-smoke Succeeded"):
        assert job in text, job
    # One pod per node (anti-affinity), named as the operator names them, on the lab's two nodes.
    nodes = sorted(n["metadata"]["name"] for n in kube.list(kube.resource("Node", "v1")))
    assert f"mlplat-ddp-2n-master-0 on {nodes[0]}" in text or f"mlplat-ddp-2n-master-0 on {nodes[1]}" in text
    assert "mlplat-ddp-2n-worker-0 on" in text
    # Tables: the sweep's sizes, the scaling table with its efficiency, the TF workers, thresholds.
    assert "busbw_gbps" in html_of(nb, "phase.bandwidth()") and "4 MiB" in html_of(nb, "phase.bandwidth()")
    ddp = html_of(nb, "phase.ddp()")
    assert "scaling_efficiency" in ddp and "samples_per_s" in ddp
    assert "mlplat-tf-smoke-worker-1" in html_of(nb, "phase.tfjob()")
    assert html_of(nb, "phase.thresholds()").count(">ok<") == 2
    # Two plots, as PNG.
    for cell in ("phase.bandwidth_plot()", "phase.scaling_plot()"):
        assert any("image/png" in o.get("data", {}) for o in outputs(nb, cell)), cell
    assert (tmp_path / "plot-60-bandwidth.png").stat().st_size > 1000
    # The records really are the lab's CPU run: gloo on the CPU, 4 ranks on 2 hosts.
    assert "gloo on cpu" in text and "4 ranks on 2 node(s)" in text
    # TrainJob: skipped, saying why (no Trainer CRDs on this cluster yet).
    tj = html_of(nb, "phase.trainjob()")
    assert "no Trainer v2 CRDs" in tj
    # Cleanup: no job left, nor the ConfigMap.
    for kind in ("PyTorchJob", "TFJob"):
        assert kube.list(kube.resource(kind, "kubeflow.org/v1"), "mlplat-validation") == []
    assert kube.get_or_none("/api/v1/namespaces/mlplat-validation/configmaps/mlplat-workloads") is None


@pytest.mark.notebooks
@pytest.mark.slow
def test_a_missed_threshold_fails_naming_it(validation_lab, kube, tmp_path):
    params = validation_lab.write_params(tmp_path / "params.yaml", min_scaling_efficiency=1.4, keep_jobs=True)
    v, _nb, err = run_notebook(params, tmp_path / "run", mode="apply")
    assert err is not None and err.ename == "PhaseFailed", err
    assert "validation.min_scaling_efficiency" in err.evalue and "look at" in err.evalue, err.evalue
    assert not v["ok"] and [f["step"] for f in v["failures"]] == ["thresholds | validation.min_scaling_efficiency"], \
        v["failures"]
    assert "scaling efficiency at 2 nodes" in v["failures"][0]["message"]
    assert CPU_STATEMENT in " ".join(v["notes"])
    # keep_jobs: the jobs stay, Succeeded, with the pods the real operator made (master and worker).
    res = kube.resource("PyTorchJob", "kubeflow.org/v1")
    jobs = {j["metadata"]["name"]: j for j in kube.list(res, "mlplat-validation")}
    assert set(jobs) == {"mlplat-allreduce", "mlplat-ddp-1n", "mlplat-ddp-2n"}, list(jobs)
    for j in jobs.values():
        conds = {c["type"]: c["status"] for c in j["status"]["conditions"]}
        assert conds.get("Succeeded") == "True", j["status"]
    from mlplat.kube import wait_for

    # The job is Succeeded when its master is; KWOK completes the worker about then too.
    pods = wait_for(kube, "Pod", None, "mlplat-validation", selector="training.kubeflow.org/job-name=mlplat-ddp-2n",
                    condition="Succeeded", timeout=60, progress=False)
    assert sorted(p["metadata"]["labels"]["training.kubeflow.org/replica-type"] for p in pods) == ["master", "worker"]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods), [p["status"] for p in pods]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, [p["spec"].get("nodeName") for p in pods]

    # A rerun finds the kept job of the same name and replaces it (its own wait, its own logs).
    from mlplat.phases import training_validation as phase

    phase.setup(params_file=str(params), mode="apply")
    phase.inventory()
    phase.bandwidth()
    ctx = phase._ctx()
    row = ctx.phase.steps["bandwidth"][0]
    assert row.ok and row.message.startswith("the previous run's job of this name deleted first"), row.message
    phase.cleanup()
    phase.finish()
    for kind in ("PyTorchJob", "TFJob"):
        r = kube.resource(kind, "kubeflow.org/v1")
        for j in kube.list(r, "mlplat-validation"):
            kube.delete(r, j["metadata"]["name"], "mlplat-validation")
        wait_for(kube, kind, None, "mlplat-validation", selector="app.kubernetes.io/managed-by=mlplat",
                 condition="Deleted", timeout=60, progress=False)


def _trainer_crds(shared: Path) -> list[dict]:
    docs = _bundle_docs(shared, "/applications/trainer/upstream/base/crds/trainer.kubeflow.org_")
    assert {d["spec"]["names"]["kind"] for d in docs} >= {"TrainJob", "ClusterTrainingRuntime"}
    return docs


def test_trainjob_against_the_trainer_crds(shared, validation_cluster, kube, tmp_path):
    """With the Trainer v2 CRDs of the offline bundle applied, the TrainJob passes the API server's
    dry run (schema and CEL rules); broken ones are refused, including by a CEL rule the local
    schema check cannot see; without the runtime it is not run."""
    from mlplat.kube import NO_RETRY, apply
    from mlplat.phases import training_validation as phase
    from mlplat.training.jobs import crd_problems

    crds = _trainer_crds(shared)
    res = apply(kube, crds, progress=False, note=lambda m: None)
    assert all(r.ok for r in res), [r.message for r in res if not r.ok]

    phase.setup(params_file=str(validation_cluster.params_path), mode="plan")
    phase.inventory()
    phase.trainjob()
    rows = phase._ctx().phase.steps["trainjob"]
    assert rows[0].ok and not rows[0].skipped, rows[0].message
    assert "server-side dry run of TrainJob mlplat-trainjob-ddp" in rows[0].message and "accepted" in rows[0].message
    assert rows[1].skipped and "plan mode" in rows[1].message
    phase.finish()

    job = phase._plan_jobs(phase._ctx())["trainjob"].manifest
    bad = json.loads(json.dumps(job))
    bad["metadata"]["namespace"] = "default"
    bad["spec"]["trainer"]["numNodes"] = "two"
    # NO_RETRY: server-side apply answers a field of the wrong type with HTTP 500 ("failed to create
    # typed patch object"), which the apply helper counts as temporary and would retry for a minute.
    r = apply(kube, [bad], dry_run=True, progress=False, note=lambda m: None, retry=NO_RETRY)[0]
    assert not r.ok and "numNodes" in r.message
    bad = json.loads(json.dumps(job))
    bad["metadata"]["namespace"] = "default"
    bad["spec"]["managedBy"] = "example.com/another-controller"  # refused by a CEL rule of the CRD
    assert crd_problems(bad, next(c for c in crds if c["spec"]["names"]["kind"] == "TrainJob")) == []
    r = apply(kube, [bad], dry_run=True, progress=False, note=lambda m: None)[0]
    assert not r.ok and "ManagedBy must be" in r.message, r.message

    phase.setup(params_file=str(validation_cluster.params_path), mode="apply")
    phase.inventory()
    phase.trainjob()
    rows = phase._ctx().phase.steps["trainjob"]
    assert rows[0].ok and "accepted" in rows[0].message
    assert rows[1].skipped and "ClusterTrainingRuntime torch-distributed is not installed" in rows[1].message
    assert kube.list(kube.resource("TrainJob", "trainer.kubeflow.org/v1alpha1"), None) == []
    phase.finish()
