"""The version-compatibility matrix, as data.

Every row cites `shared/reference/versions.md` (the section in brackets), which cites the upstream
source. Checks in :func:`check_stack` read these tables and nothing else, so a new release is one
new row here.
"""

from __future__ import annotations

from dataclasses import dataclass


def parse_version(text: str) -> tuple[int, ...]:
    """Parse '1.34.4', 'v1.34', '26.03', '580.95.05' into a tuple of ints (leading 'v' ignored).

    Raises ValueError with the text when it is not a dotted number.
    """
    raw = str(text).strip().lstrip("vV")
    parts = raw.split(".")
    try:
        return tuple(int(p) for p in parts if p != "")
    except ValueError:
        raise ValueError(f"not a version number: {text!r}") from None


def minor(text: str) -> tuple[int, int]:
    """The (major, minor) of a version string."""
    v = parse_version(text)
    return (v[0], v[1] if len(v) > 1 else 0)


def fmt(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


# Kubeflow release -> (min Kubernetes, max Kubernetes or None, Istio minor it ships, Training Operator)
# [versions.md 1a, 1b]. 26.03: "1.34+", Istio images 1.28.0 (charts 1.29.0, note N5).
KUBEFLOW: dict[str, dict] = {
    "1.0": {"k8s_min": (1, 14), "k8s_max": (1, 15), "istio": (1, 1)},
    "1.3": {"k8s_min": (1, 17), "k8s_max": (1, 21), "istio": (1, 9)},
    "1.4": {"k8s_min": (1, 19), "k8s_max": (1, 21), "istio": (1, 9)},
    "1.5": {"k8s_min": (1, 19), "k8s_max": (1, 21), "istio": (1, 11)},
    "1.6": {"k8s_min": (1, 22), "k8s_max": (1, 22), "istio": (1, 14)},
    "1.7": {"k8s_min": (1, 24), "k8s_max": (1, 25), "istio": (1, 16)},
    "1.8": {"k8s_min": (1, 25), "k8s_max": (1, 26), "istio": (1, 17)},
    "1.9": {"k8s_min": (1, 29), "k8s_max": (1, 31), "istio": (1, 22)},
    "1.10": {"k8s_min": (1, 32), "k8s_max": (1, 33), "istio": (1, 24)},
    "1.11": {"k8s_min": (1, 34), "k8s_max": None, "istio": (1, 28)},
    "26.03": {"k8s_min": (1, 34), "k8s_max": None, "istio": (1, 28)},
}

# Istio minor -> (supported k8s min, max) [versions.md 2a]. 1.1-1.5 have no official table; their
# ceiling is set by the API removals in [versions.md 2b]: v1beta1 CRDs/webhooks up to Istio 1.10
# cannot install on Kubernetes >= 1.22.
ISTIO_K8S: dict[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]] = {
    (1, 1): ((1, 11), (1, 15)),
    (1, 2): ((1, 11), (1, 16)),
    (1, 3): ((1, 13), (1, 16)),
    (1, 4): ((1, 13), (1, 16)),
    (1, 5): ((1, 13), (1, 17)),
    (1, 6): ((1, 15), (1, 18)),
    (1, 7): ((1, 16), (1, 18)),
    (1, 8): ((1, 16), (1, 19)),
    (1, 9): ((1, 17), (1, 20)),
    (1, 10): ((1, 18), (1, 21)),
    (1, 11): ((1, 18), (1, 22)),
    (1, 12): ((1, 19), (1, 22)),
    (1, 13): ((1, 20), (1, 23)),
    (1, 14): ((1, 21), (1, 24)),
    (1, 15): ((1, 22), (1, 25)),
    (1, 16): ((1, 22), (1, 25)),
    (1, 17): ((1, 23), (1, 26)),
    (1, 18): ((1, 24), (1, 27)),
    (1, 19): ((1, 25), (1, 28)),
    (1, 20): ((1, 25), (1, 29)),
    (1, 21): ((1, 26), (1, 29)),
    (1, 22): ((1, 27), (1, 30)),
    (1, 23): ((1, 27), (1, 30)),
    (1, 24): ((1, 28), (1, 31)),
    (1, 25): ((1, 29), (1, 32)),
    (1, 26): ((1, 29), (1, 33)),
    (1, 27): ((1, 29), (1, 33)),
    (1, 28): ((1, 30), (1, 34)),
    (1, 29): ((1, 31), (1, 35)),
    (1, 30): ((1, 32), (1, 36)),
}

# CUDA major -> minimum Linux driver branch [versions.md 4a, minor-version compatibility].
CUDA_MIN_DRIVER: dict[int, int] = {13: 580, 12: 525, 11: 450, 10: 410}

# kubeadm config API per Kubernetes minor [versions.md 3]: v1beta4 from 1.31, v1beta3 1.22-1.34+.
def kubeadm_api_versions(k8s: tuple[int, int]) -> list[str]:
    """kubeadm config API versions that the given Kubernetes minor accepts, preferred first."""
    out = []
    if k8s >= (1, 31):
        out.append("kubeadm.k8s.io/v1beta4")
    if (1, 22) <= k8s <= (1, 36):
        out.append("kubeadm.k8s.io/v1beta3")
    if (1, 15) <= k8s <= (1, 26):
        out.append("kubeadm.k8s.io/v1beta2")
    return out


# Sandbox (pause) image kubeadm expects per Kubernetes minor [versions.md 3, kubespray table].
PAUSE_IMAGE: dict[tuple[int, int], str] = {
    (1, 23): "3.6", (1, 24): "3.7", (1, 25): "3.8", (1, 26): "3.9", (1, 27): "3.9", (1, 28): "3.9",
    (1, 29): "3.9", (1, 30): "3.9", (1, 31): "3.10", (1, 32): "3.10", (1, 33): "3.10",
    (1, 34): "3.10.1", (1, 35): "3.10.1", (1, 36): "3.10.2",
}

# Training Operator v1 minor -> minimum Kubernetes [versions.md 1c].
TRAINING_OPERATOR_MIN_K8S: dict[tuple[int, int], tuple[int, int]] = {
    (1, 7): (1, 25), (1, 8): (1, 27), (1, 9): (1, 28),
}
# Trainer v2 minor -> minimum Kubernetes [versions.md 1c].
TRAINER_MIN_K8S: dict[tuple[int, int], tuple[int, int]] = {
    (2, 0): (1, 29), (2, 1): (1, 31), (2, 2): (1, 31), (2, 3): (1, 31),
}
# containerd major -> the toolkit version that writes its config format [versions.md 4d]:
# containerd 2.x config v3 needs nvidia-container-toolkit >= 1.17.4.
TOOLKIT_MIN_FOR_CONTAINERD2 = (1, 17, 4)


@dataclass(frozen=True)
class Incompatibility:
    """One incompatible version pair: the key paths involved, what is wrong, and the fix."""

    path: str
    message: str
    fix: str


def _k8s_range_text(lo: tuple[int, int], hi: tuple[int, int] | None) -> str:
    return f"{fmt(lo)}+" if hi is None else f"{fmt(lo)}-{fmt(hi)}"


def check_stack(v: dict) -> list[Incompatibility]:
    """Check a `versions:` mapping against the tables above; return every incompatibility found.

    Keys read (all optional): kubernetes, istio, kubeflow, cuda, nvidia_driver, containerd,
    nvidia_container_toolkit, training_operator, trainer. Unparseable values are skipped here
    (the schema reports them).
    """
    out: list[Incompatibility] = []

    def get(key):
        val = v.get(key)
        if val in (None, ""):
            return None
        try:
            return parse_version(str(val))
        except ValueError:
            return None

    k8s = get("kubernetes")
    k8s_mm = k8s[:2] if k8s and len(k8s) >= 2 else None
    kf = v.get("kubeflow")
    if kf and k8s_mm:
        row = KUBEFLOW.get(str(kf))
        if row is None:
            out.append(Incompatibility("versions.kubeflow", f"Kubeflow {kf} is not in the compatibility table",
                                       f"use one of {', '.join(KUBEFLOW)} (26.03 is the default)"))
        else:
            lo, hi = row["k8s_min"], row["k8s_max"]
            if k8s_mm < lo or (hi is not None and k8s_mm > hi):
                out.append(Incompatibility(
                    "versions.kubeflow",
                    f"Kubeflow {kf} supports Kubernetes {_k8s_range_text(lo, hi)}, not {fmt(k8s_mm)}",
                    f"set versions.kubernetes to {fmt(lo)}.x or later" if k8s_mm < lo
                    else "use a newer Kubeflow (26.03 targets Kubernetes 1.34+)"))
    istio = get("istio")
    if istio and k8s_mm:
        rng = ISTIO_K8S.get(istio[:2])
        if rng is None:
            out.append(Incompatibility("versions.istio", f"Istio {fmt(istio)} is not in the support table",
                                       "use an Istio release listed in reference/versions.md (1.28 for Kubeflow 26.03)"))
        else:
            lo, hi = rng
            if not lo <= k8s_mm <= hi:
                out.append(Incompatibility(
                    "versions.istio",
                    f"Istio {fmt(istio[:2])} supports Kubernetes {fmt(lo)}-{fmt(hi)}, not {fmt(k8s_mm)}",
                    "pick the Istio that ships with your Kubeflow release (1.28.0 for 26.03)"))
    if istio and kf and str(kf) in KUBEFLOW:
        shipped = KUBEFLOW[str(kf)]["istio"]
        if istio[:2] != shipped:
            out.append(Incompatibility(
                "versions.istio",
                f"Kubeflow {kf} ships and is validated with Istio {fmt(shipped)}, not {fmt(istio[:2])}",
                f"set versions.istio to {fmt(shipped)}.x"))
    cuda, drv = get("cuda"), get("nvidia_driver")
    if cuda and drv:
        need = CUDA_MIN_DRIVER.get(cuda[0])
        if need and drv[0] < need:
            out.append(Incompatibility(
                "versions.cuda", f"CUDA {fmt(cuda)} needs NVIDIA driver >= {need}, params pin {fmt(drv)}",
                f"set versions.nvidia_driver to {need} or later (R580 is the 2026 LTS branch)"))
    ctd, tk = get("containerd"), get("nvidia_container_toolkit")
    if ctd and tk and ctd[0] >= 2 and tk < TOOLKIT_MIN_FOR_CONTAINERD2:
        out.append(Incompatibility(
            "versions.nvidia_container_toolkit",
            f"containerd {fmt(ctd)} uses config version 3, which nvidia-container-toolkit {fmt(tk)} cannot write",
            "use nvidia-container-toolkit 1.17.4 or later (1.18+ writes a drop-in)"))
    to = get("training_operator")
    if to and k8s_mm:
        need = TRAINING_OPERATOR_MIN_K8S.get(to[:2])
        if need and k8s_mm < need:
            out.append(Incompatibility("versions.training_operator",
                                       f"Training Operator {fmt(to)} needs Kubernetes >= {fmt(need)}",
                                       f"raise versions.kubernetes to {fmt(need)} or later"))
    tr = get("trainer")
    if tr and k8s_mm:
        need = TRAINER_MIN_K8S.get(tr[:2])
        if need and k8s_mm < need:
            out.append(Incompatibility("versions.trainer", f"Trainer {fmt(tr)} needs Kubernetes >= {fmt(need)}",
                                       f"raise versions.kubernetes to {fmt(need)} or later"))
    if k8s_mm and not kubeadm_api_versions(k8s_mm):
        out.append(Incompatibility("versions.kubernetes", f"no kubeadm config API known for Kubernetes {fmt(k8s_mm)}",
                                   "use Kubernetes 1.31 or later (kubeadm v1beta4)"))
    return out
