"""The parameter schema: the whole inventory and settings of one site, as pydantic models.

`params/example.yaml` documents every key; keep the two in step (a test loads the example and
checks that every field of these models appears in it).

Secrets are references, never values: a field typed :class:`SecretRef` accepts
``{env: NAME}`` or ``{file: PATH}`` and refuses a plain string.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLE_CONTROL_PLANE = "control-plane"
ROLE_WORKER = "worker"


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SecretRef(Strict):
    """Where a secret lives. Exactly one of `env` (an environment variable's name) or `file`."""

    env: Optional[str] = None
    file: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _not_literal(cls, data):
        if isinstance(data, (str, int, float)):
            raise ValueError(
                "a secret must be a reference, not a literal value: write {env: VAR_NAME} or {file: /path}")
        return data

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env: or file:")
        return self


class SSH(Strict):
    """How to reach hosts over SSH. Per-host `ssh:` entries override these defaults."""

    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    key_file: Optional[str] = None
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = Field(10.0, gt=0, le=300)
    command_timeout: float = Field(600.0, gt=0)
    sudo_password: Optional[SecretRef] = None
    parallel: int = Field(32, ge=1, le=256)


class HostSSH(Strict):
    user: Optional[str] = None
    port: Optional[int] = Field(None, ge=1, le=65535)
    key_file: Optional[str] = None


class Host(Strict):
    """One server."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    address: str
    roles: list[Literal["control-plane", "worker"]] = Field(min_length=1)
    ssh: HostSSH = HostSSH()
    gpus: int = Field(0, ge=0, le=64)
    gpu_model: Optional[str] = None
    # Static-network settings of this host (phase 05 / 10); null keeps what the host has.
    interface: Optional[str] = None
    static_address: Optional[str] = None
    install_disk: Optional[str] = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not _is_hostname(v):
                raise ValueError(f"{v!r} is neither an IP address nor a DNS name")
        return v

    @field_validator("static_address")
    @classmethod
    def _static(cls, v):
        if v is not None:
            ipaddress.ip_interface(v)  # raises with a clear message
            if "/" not in v:
                raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/24")
        return v


def _is_hostname(v: str) -> bool:
    import re

    if re.fullmatch(r"[0-9.]+", v):  # looks like an IPv4 address but did not parse as one
        return False
    return bool(re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", v))


class OS(Strict):
    """What the hosts run (or should run after phase 05). Phases take the family from facts."""

    family: Literal["rhel", "debian"] = "rhel"
    distro: Literal["rocky", "almalinux", "centos", "rhel", "ubuntu", "debian"] = "rocky"
    version: str = "9"


SUPPORTED_OS = {
    "rocky": {"8", "9"}, "almalinux": {"8", "9"}, "rhel": {"8", "9"}, "centos": {"7"},
    "ubuntu": {"22.04", "24.04"}, "debian": {"12"},
}
OS_FAMILY = {"rocky": "rhel", "almalinux": "rhel", "rhel": "rhel", "centos": "rhel",
             "ubuntu": "debian", "debian": "debian"}


class Network(Strict):
    """Site network settings used by static-IP configuration (phase 10) and install files (05)."""

    manage_static_ip: bool = False
    prefix_length: int = Field(24, ge=1, le=32)
    gateway: Optional[str] = None
    dns: list[str] = ["1.1.1.1"]
    search_domains: list[str] = []
    ntp_servers: list[str] = []

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v):
        if v is not None:
            ipaddress.ip_address(v)
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v):
        for a in v:
            ipaddress.ip_address(a)
        return v


class Mirrors(Strict):
    """Package mirrors. Empty values keep the distribution's defaults."""

    rhel_baseos: Optional[str] = None
    rhel_appstream: Optional[str] = None
    epel: Optional[str] = None
    centos7_vault: str = "https://vault.centos.org/7.9.2009"
    apt: Optional[str] = None
    kubernetes: Optional[str] = None
    nvidia_cuda: Optional[str] = None
    nvidia_container_toolkit: Optional[str] = None
    docker: Optional[str] = None
    pip_index: Optional[str] = None


class Disk(Strict):
    """A filesystem to grow to the size of its device (phase 10)."""

    host: Optional[str] = None
    mount: str = "/"
    device: Optional[str] = None
    lv: Optional[str] = None
    grow: bool = True


class HostPrep(Strict):
    """Host preparation choices (phase 10)."""

    selinux: Literal["permissive", "disabled", "keep"] = "permissive"
    firewall: Literal["open-ports", "disabled", "keep"] = "open-ports"
    extra_packages: list[str] = []


class GPURuntime(Strict):
    """NVIDIA driver and container runtime choices (phase 20)."""

    cuda_toolkit: bool = False
    containerd_source: Literal["docker-repo", "distro"] = "docker-repo"
    nvidia_runtime_default: Literal["gpu-hosts", "all-hosts"] = "gpu-hosts"
    docker_legacy: bool = False
    reboot: bool = True
    reboot_timeout: float = Field(900.0, gt=0)
    smoke_image: str = "nvcr.io/nvidia/cuda:13.0.0-base-ubuntu24.04"


class Versions(Strict):
    """Versions of every component; defaults are the 2026 stack in DESIGN.md."""

    kubernetes: str = "1.34.4"
    containerd: str = "2.1.4"
    runc: str = "1.3.0"
    nvidia_driver: str = "580"
    cuda: str = "13.0"
    nvidia_container_toolkit: str = "1.18.0"
    device_plugin: str = "0.20.0"
    flannel: str = "0.28.9"
    istio: str = "1.28.0"
    kubeflow: str = "26.03"
    training_operator: str = "1.9.2"
    trainer: str = "2.1.0"

    @field_validator("*")
    @classmethod
    def _numeric(cls, v: str):
        from .versions import parse_version

        parse_version(v)
        return v


class Kubernetes(Strict):
    """Cluster settings (phase 30)."""

    existing_kubeconfig: Optional[str] = None
    context: Optional[str] = None
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    control_plane_endpoint: Optional[str] = None
    cgroup_driver: Literal["systemd", "cgroupfs"] = "systemd"
    image_repository: Optional[str] = None
    # flannel (DaemonSet from the offline bundle) | bridge (the CNI bridge plugin written on every
    # host, plus host-gw routes between the nodes' pod ranges) | none (bring your own)
    cni: Literal["flannel", "bridge", "none"] = "flannel"
    field_manager: str = "mlplat"
    request_timeout: float = Field(30.0, gt=0)
    # cgroup v1 hosts: failCgroupV1: false for the kubelet and kubeadm's SystemVerification ignored.
    allow_cgroup_v1: bool = False
    # Deep-merged into the rendered KubeletConfiguration (camelCase field names, as kubelet writes them).
    kubelet_config: dict[str, Any] = {}
    # Rendered as a KubeProxyConfiguration document (kubeproxy.config.k8s.io/v1alpha1) when not empty.
    kube_proxy_config: dict[str, Any] = {}
    # Image of the DNS and Service checks after the cluster is built (busybox: nslookup, httpd, wget).
    net_check_image: str = "docker.io/library/busybox:1.36.1"
    # Air-gapped sites: a directory (on the machine running mlplat) of image archives (docker save /
    # OCI layout .tar: kubeadm's images, the CNI's, the checks'...). Phase 30 imports into every
    # host's containerd each image it lacks, before kubeadm init, so nothing is ever pulled.
    image_archives: Optional[str] = None

    @field_validator("pod_cidr", "service_cidr")
    @classmethod
    def _cidr(cls, v):
        ipaddress.ip_network(v, strict=True)
        return v

    @field_validator("kubelet_config")
    @classmethod
    def _kubelet_config(cls, v):
        return _component_config(v, "KubeletConfiguration", KUBELET_CONFIG_TYPES)

    @field_validator("kube_proxy_config")
    @classmethod
    def _kube_proxy_config(cls, v):
        v = _component_config(v, "KubeProxyConfiguration", KUBE_PROXY_CONFIG_TYPES)
        mode = v.get("mode")
        if mode not in (None, "", "iptables", "nftables", "ipvs"):
            raise ValueError(f"mode {mode!r} is not a kube-proxy mode: use iptables, nftables or ipvs")
        return v

    @model_validator(mode="after")
    def _no_second_cgroup_driver(self):
        drv = self.kubelet_config.get("cgroupDriver")
        if drv is not None and drv != self.cgroup_driver:
            raise ValueError(f"kubelet_config.cgroupDriver ({drv!r}) contradicts cgroup_driver "
                             f"({self.cgroup_driver!r}): set kubernetes.cgroup_driver only")
        return self


# Types of the component-config fields sites commonly set (others pass as written and are checked
# by `kubeadm config validate`). bool is tested before int: a YAML `true` must not pass for a number.
KUBELET_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "imageGCHighThresholdPercent": int, "imageGCLowThresholdPercent": int, "maxPods": int,
    "podPidsLimit": int, "evictionHard": dict, "evictionSoft": dict, "evictionSoftGracePeriod": dict,
    "evictionMinimumReclaim": dict, "systemReserved": dict, "kubeReserved": dict, "featureGates": dict,
    "failSwapOn": bool, "failCgroupV1": bool, "protectKernelDefaults": bool,
    "localStorageCapacityIsolation": bool, "serializeImagePulls": bool, "cgroupRoot": str,
    "cgroupDriver": str, "containerRuntimeEndpoint": str, "address": str, "healthzBindAddress": str,
    "readOnlyPort": int, "clusterDNS": list, "clusterDomain": str,
}
KUBE_PROXY_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "mode": str, "conntrack": dict, "iptables": dict, "nftables": dict, "ipvs": dict, "featureGates": dict,
    "clusterCIDR": str, "bindAddress": str, "metricsBindAddress": str, "healthzBindAddress": str,
}
_CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")


def _component_config(v: dict, kind: str, types: dict) -> dict:
    """A component config fragment: camelCase top-level fields, no apiVersion/kind (mlplat writes
    them), the usual fields with their types; every problem in one message."""
    problems = []
    for key, val in v.items():
        if key in ("apiVersion", "kind"):
            problems.append(f"{key}: mlplat writes it ({kind}); remove it")
        elif not isinstance(key, str) or not _CAMEL.match(key):
            camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), str(key))
            problems.append(f"{key!r}: {kind} fields are camelCase as in the kubelet/kube-proxy docs"
                            + (f" (did you mean {camel!r}?)" if camel != key else ""))
        elif key in types:
            want = types[key]
            if isinstance(val, bool) and want is not bool:
                problems.append(f"{key}: {val!r} is a boolean, expected {want.__name__}")
            elif not isinstance(val, want):
                problems.append(f"{key}: {val!r} is {type(val).__name__}, expected {want.__name__}")
            elif key.endswith("Percent") and not 0 <= val <= 100:
                problems.append(f"{key}: {val} is not a percentage (0-100)")
    if problems:
        raise ValueError("; ".join(problems))
    return v


class ImageMirror(Strict):
    mode: Literal["none", "registry", "node-import"] = "none"
    registry: Optional[str] = None
    archive_dir: Optional[str] = None


class Kubeflow(Strict):
    """Kubeflow install (phase 50)."""

    source: Literal["offline", "git"] = "offline"
    bundle: Optional[str] = None
    git_url: str = "https://github.com/kubeflow/manifests"
    git_ref: str = "26.03"
    # default: the release's example set; training-only: + cert-manager, Istio, Trainer v2 and the v1
    # training operator; training-operator: the v1 training operator alone (no webhooks needing
    # cert-manager, no Istio), enough for phase 60's PyTorchJob and TFJob
    components: Literal["default", "training-only", "training-operator"] = "default"
    istio_owner: Literal["phase40", "kubeflow"] = "phase40"
    image_mirror: ImageMirror = ImageMirror()
    apply_timeout: float = Field(900.0, gt=0)


class Istio(Strict):
    """Istio install (phase 40)."""

    method: Literal["kubeflow-manifests", "istioctl"] = "kubeflow-manifests"
    profile: str = "default"
    addons: list[Literal["kiali", "grafana", "prometheus", "jaeger"]] = ["kiali", "grafana", "prometheus", "jaeger"]
    addons_dir: Optional[str] = None


class Validation(Strict):
    """Thresholds of the distributed-training validation (phase 60)."""

    min_busbw_gbps: float = Field(10.0, ge=0)
    min_scaling_efficiency: float = Field(0.8, ge=0, le=1.5)
    ddp_steps: int = Field(50, ge=1)
    image: str = "pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime"
    nccl_env: dict[str, str] = {"NCCL_DEBUG": "INFO"}
    keep_jobs: bool = False


class OSInstall(Strict):
    """Unattended install files (phase 05): Kickstart for the RHEL family, autoinstall for Ubuntu."""

    iso_volume_label: Optional[str] = None
    install_source: Optional[str] = None
    kickstart_url: Optional[str] = None
    authorized_keys: list[str] = []
    root_password_hash: Optional[SecretRef] = None
    timezone: str = "UTC"
    keyboard: str = "us"
    language: str = "en_US.UTF-8"
    lvm: bool = True
    extra_packages: list[str] = []


class Lab(Strict):
    """Written by `mlplat lab up`; absent for real sites."""

    state_dir: str
    nodes: Literal["kwok", "real"] = "kwok"
    # GPUs each simulated (KWOK) node advertises as nvidia.com/gpu; the lab hosts themselves have none.
    simulated_gpus: int = Field(4, ge=0, le=64)
    # Real nodes: a directory, visible on every lab host, holding the lab-built kubeadm, kubelet and
    # kubectl. No package repository is reachable from the lab, so phase 30 copies these instead.
    binaries_dir: Optional[str] = None

    @field_validator("binaries_dir")
    @classmethod
    def _abs(cls, v):
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path (it is read on the lab hosts)")
        return v


class Params(Strict):
    """A site: its hosts and every setting the phases read."""

    site: str = Field("site", pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["plan", "apply"] = "plan"
    confirm: bool = False
    os: OS = OS()
    ssh: SSH = SSH()
    hosts: list[Host] = Field(min_length=1)
    network: Network = Network()
    mirrors: Mirrors = Mirrors()
    disks: list[Disk] = []
    host_prep: HostPrep = HostPrep()
    gpu_runtime: GPURuntime = GPURuntime()
    versions: Versions = Versions()
    kubernetes: Kubernetes = Kubernetes()
    istio: Istio = Istio()
    kubeflow: Kubeflow = Kubeflow()
    validation: Validation = Validation()
    os_install: OSInstall = OSInstall()
    secrets: dict[str, SecretRef] = {}
    lab: Optional[Lab] = None

    def control_plane(self) -> list[Host]:
        return [h for h in self.hosts if ROLE_CONTROL_PLANE in h.roles]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)
