"""Real output for the training pods of the KWOK lab (phase 60).

KWOK runs nothing in a pod: it marks the pods of a PyTorchJob or TFJob Running, then Succeeded,
and serves whatever log file the cluster names for them. So that phase 60 parses real output
there, :func:`prepare` runs the phase's workloads for real on this machine's CPU, one process
group per pod the phase will create, and registers each pod's output as that pod's log:

1. the jobs come from :func:`mlplat.training.plan.validation_jobs` for the lab's layout (every lab
   node, ``lab.simulated_gpus`` GPUs each), the same function the phase calls, so the pod names
   (``mlplat-ddp-2n-master-0``...) match what the training operator will create;
2. each PyTorchJob is run as the operator would start it: one ``torchrun <script>`` per pod with the
   environment the operator gives that pod (``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``,
   ``PET_MASTER_ADDR``/``PORT``...), the job's own container environment (``NCCL_DEBUG``...), and
   (as root) the pod's name as hostname in its own UTS namespace, all pods of a job at once on
   127.0.0.1. Processes per pod: the job's, at most ``procs_per_pod`` (2: this machine has 2 cores);
   the model and message sizes are CPU-sized (:data:`CPU_ARGS`), the backend gloo;
3. the TFJob's workers run ``tf_mwms_smoke.py`` with the ``TF_CONFIG`` the operator writes, with a
   Python that has TensorFlow (``tf_python``, ``$MLPLAT_TF_PYTHON``, or this one if it imports
   tensorflow). Without one, the logs of an earlier real run (``tf_fallback``: a folder with
   ``tfjob.*-worker-<i>.log``, e.g. ``tests/fixtures/training``) stand in, and their first line says
   so; with neither, the script runs anyway and its log holds its real error record;
4. every output is written in CRI format (:func:`mlplat.lab.cluster.write_pod_log`) to
   ``<state>/workload-logs/<namespace>/<pod>.log`` and a kwok ``Logs`` object named after the pod
   (:func:`mlplat.lab.cluster.pod_logs_manifest`) is applied, in the phase's namespace (created
   here if needed), with the lab's field manager. A ``Logs`` object outlives the pod: a rerun of
   the phase recreates the pods with the same names and gets the same logs.

Each log starts with one line saying that KWOK ran nothing and where the output comes from. The
runs are cached: a second call with the same jobs, arguments and workload sources only re-applies
the ``Logs`` objects (``force`` runs them again). The figures are whatever this machine's CPU gave:
they prove the pipeline (operator, pods, logs, parsers, thresholds, verdict), not GPU performance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..training.jobs import workload_path, workload_source
from ..training.plan import NAMESPACE, PlannedJob, cluster_layout, validation_jobs
from . import cluster as lab_cluster

FIELD_MANAGER = lab_cluster.FIELD_MANAGER
TF_PYTHON_ENV = "MLPLAT_TF_PYTHON"
HEADER = "mlplat lab: KWOK ran nothing in this pod;"
RDZV_TIMEOUT_S = 60
JOB_TIMEOUT_S = 300

#: CPU-sized arguments per workload (the job manifests carry the GPU-sized ones).
CPU_ARGS = {
    "allreduce_sweep.py": ["-b", "1K", "-e", "4M", "-f", "4", "-w", "2", "-n", "5", "--threads", "1"],
    "ddp_bench.py": ["--hidden", "256", "--layers", "2", "--input-dim", "256", "--batch-size", "32",
                     "--warmup-steps", "3", "--steps", "30", "--threads", "1"],
    "tf_mwms_smoke.py": ["--steps", "5"],
}
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
                "TORCHELASTIC_RUN_ID", "TF_CONFIG", "MLPLAT_BACKEND")


class WorkloadLogsError(RuntimeError):
    """The CPU run could not be made (no torch, a run that hung); the message says what to do."""


def lab_jobs(params) -> list[PlannedJob]:
    """The jobs phase 60 will submit on this lab: every lab host is a node with
    ``lab.simulated_gpus`` GPUs (or, with 0, a CPU node)."""
    names = [h.name for h in params.hosts]
    gpus = params.lab.simulated_gpus if params.lab else 0
    layout = cluster_layout({n: gpus for n in names}, cpu_nodes=names)
    return validation_jobs(params.validation, layout, run_id="lab")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("PET_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


def _as_pod(name: str, argv: list[str]) -> list[str]:
    """``argv`` with ``name`` as its hostname (own UTS namespace) when root, as in a pod."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv]
    return argv


def _run_pods(argvs: dict[str, list[str]], envs: dict[str, dict], timeout: float) -> dict[str, tuple[int, str]]:
    """Start every pod's process at once; wait for all; (exit code, stdout+stderr) per pod."""
    procs = {pod: subprocess.Popen(_as_pod(pod, argv), env=envs[pod], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                   start_new_session=True)
             for pod, argv in argvs.items()}
    out: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + timeout
    try:
        for pod, p in procs.items():
            try:
                text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate()
                text += f"\nmlplat lab: killed after {timeout:g} s\n"
            out[pod] = (p.returncode, text)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _torch_job(job: PlannedJob, procs_per_pod: int) -> tuple[dict[str, tuple[int, str]], str]:
    nproc = max(1, min(job.procs_per_node, procs_per_pod))
    port = _free_port()
    args = [*CPU_ARGS[job.script], "--tag", job.name]
    argv = [sys.executable, "-m", "torch.distributed.run", workload_path(job.script), *args]
    argvs, envs = {}, {}
    for rank, pod in enumerate(job.pods):
        env = _base_env()
        env.update(job.env())
        env.update({
            # what training-operator v1.9 sets in a PyTorchJob pod with nprocPerNode
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "WORLD_SIZE": str(job.nodes * nproc), "RANK": str(rank),
            "PET_NNODES": str(job.nodes), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": str(nproc),
            "MLPLAT_RDZV_TIMEOUT": str(RDZV_TIMEOUT_S), "PET_RDZV_CONF": f"timeout={RDZV_TIMEOUT_S}",
        })
        argvs[pod], envs[pod] = argv, env
    how = (f"torchrun --nnodes={job.nodes} --nproc_per_node={nproc} {job.script} {' '.join(args)}, "
           f"one process group per pod (the job asks {job.procs_per_node} per pod), gloo on the CPU")
    return _run_pods(argvs, envs, JOB_TIMEOUT_S), how


def find_tf_python(tf_python: str | None = None) -> str | None:
    """A Python with TensorFlow: ``tf_python``, ``$MLPLAT_TF_PYTHON``, or this one; else None."""
    for cand in (tf_python, os.environ.get(TF_PYTHON_ENV), sys.executable):
        if cand and Path(cand).exists():
            r = subprocess.run([cand, "-c", "import tensorflow"], capture_output=True, timeout=120, check=False,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if r.returncode == 0:
                return cand
    return None


def _tf_job(job: PlannedJob, tf_python: str | None, tf_fallback: Path | None) -> tuple[dict[str, tuple[int, str]], str]:
    args = [*CPU_ARGS[job.script], "--tag", job.name]
    if tf_python is None and tf_fallback is not None:
        files = sorted(Path(tf_fallback).glob("tfjob.*-worker-*.log"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1]) if p.stem.rsplit("-", 1)[1].isdigit() else 0)
        if len(files) >= len(job.pods):
            how = (f"no Python with tensorflow here: the output of an earlier real run, {files[0].parent}/"
                   f"{files[0].name} and the like (see SOURCES.md there)")
            return {pod: (0, f.read_text()) for pod, f in zip(job.pods, files)}, how
    python = tf_python or sys.executable
    ports = [_free_port() for _ in job.pods]
    workers = [f"127.0.0.1:{p}" for p in ports]
    argvs, envs = {}, {}
    for i, pod in enumerate(job.pods):
        env = _base_env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i},
                                       "environment": "cloud"})
        argvs[pod], envs[pod] = [python, workload_path(job.script), *args], env
    how = (f"python3 {job.script} {' '.join(args)} per worker with the TF_CONFIG the operator writes"
           + ("" if tf_python else " (no Python with tensorflow found: the log holds the script's own error)"))
    return _run_pods(argvs, envs, JOB_TIMEOUT_S), how


def _signature(jobs: list[PlannedJob], procs_per_pod: int, tf: str) -> str:
    h = hashlib.sha256()
    for j in jobs:
        h.update(json.dumps([j.key, j.name, j.kind, j.nodes, j.procs_per_node, j.pods, j.script,
                             CPU_ARGS.get(j.script), j.env()]).encode())
        h.update(workload_source(j.script).encode())
    h.update(f"{procs_per_pod}|{tf}".encode())
    return h.hexdigest()


def logs_dir(state_dir: Path, namespace: str = NAMESPACE) -> Path:
    return Path(state_dir) / "workload-logs" / namespace


def default_tf_fallback() -> Path | None:
    """The captured real TF run in the repository (``tests/fixtures/training``), if this is a checkout."""
    for p in Path(__file__).resolve().parents:
        if (p / "pyproject.toml").exists():
            d = p / "tests" / "fixtures" / "training"
            return d if any(d.glob("tfjob.*-worker-*.log")) else None
    return None


def prepare(state_dir: Path, kubeconfig: Path, params_file: Path, *, procs_per_pod: int = 2,
            tf_python: str | None = None, tf_fallback: Path | None | str = "auto", force: bool = False,
            progress=print) -> list[dict]:
    """Run phase 60's workloads on the CPU and serve their output as the lab pods' logs.

    ``state_dir`` is the lab cluster's state folder (the one given to
    :func:`mlplat.lab.cluster.up`), ``kubeconfig`` its kubeconfig, ``params_file`` the lab's params
    (hosts, ``lab.simulated_gpus``, ``validation``). Returns one row per pod: pod, job, log file,
    source, exit code, seconds. ``tf_fallback="auto"`` is :func:`default_tf_fallback`; None runs the
    TF script even without TensorFlow (its log then holds its own error). Raises
    :class:`WorkloadLogsError` when torch is missing.
    """
    if tf_fallback == "auto":
        tf_fallback = default_tf_fallback()
    from ..kube import apply, client_from
    from ..params import load_params

    params = load_params(Path(params_file))
    jobs = [j for j in lab_jobs(params) if j.pods]
    out = logs_dir(state_dir)
    out.mkdir(parents=True, exist_ok=True)
    tf_py = find_tf_python(tf_python) if any(j.kind == "TFJob" for j in jobs) else None
    tf_key = "tf:" + (tf_py or (f"fallback:{tf_fallback}" if tf_fallback else "none"))
    sig = _signature(jobs, procs_per_pod, tf_key)
    stamp = out / "signature.json"
    cached = (not force and stamp.exists() and json.loads(stamp.read_text()).get("signature") == sig
              and all((out / f"{p}.log").exists() for j in jobs for p in j.pods))
    rows: list[dict] = []
    if cached:
        rows = json.loads(stamp.read_text())["rows"]
        progress(f"lab workload logs | {len(rows)} pod log(s) from an earlier CPU run ({out})")
    else:
        if any(j.kind == "PyTorchJob" for j in jobs):
            probe = subprocess.run([sys.executable, "-c", "import torch.distributed"], capture_output=True, text=True,
                                   timeout=300, check=False)
            if probe.returncode != 0:
                raise WorkloadLogsError("torch is not importable here, so the lab cannot run the training workloads "
                                        "on the CPU: install the project with its train extra (pip install -e '.[train]')")
        for job in jobs:
            t0 = time.monotonic()
            progress(f"lab workload logs | {job.kind} {job.name} | running on the CPU ({len(job.pods)} pod(s))")
            if job.kind == "TFJob":
                results, how = _tf_job(job, tf_py, tf_fallback)
            else:
                results, how = _torch_job(job, procs_per_pod)
            secs = round(time.monotonic() - t0, 1)
            for pod in job.pods:
                rc, text = results[pod]
                head = (f"{HEADER} this log is the output of a real CPU run of the same workload on the lab "
                        f"machine: {how}; exit code {rc}")
                f = lab_cluster.write_pod_log(out / f"{pod}.log", head + "\n" + text.rstrip("\n"))
                rows.append({"pod": pod, "job": job.name, "kind": job.kind, "file": str(f), "exit_code": rc,
                             "seconds": secs, "source": how})
        stamp.write_text(json.dumps({"signature": sig, "rows": rows}, indent=2))
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    objs = [ns] + [lab_cluster.pod_logs_manifest(NAMESPACE, r["pod"], Path(r["file"])) for r in rows]
    kube = client_from(str(kubeconfig), field_manager=FIELD_MANAGER)
    try:
        res = apply(kube, objs, progress=False, note=lambda m: None)
    finally:
        kube.close()
    bad = [r.message for r in res if not r.ok]
    if bad:
        raise WorkloadLogsError("lab workload logs | could not register the pod logs: " + "; ".join(bad))
    progress(f"lab workload logs | {len(rows)} pod log(s) served in namespace {NAMESPACE}")
    return rows
