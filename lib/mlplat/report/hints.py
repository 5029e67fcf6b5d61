"""Known error signatures mapped to the step or notebook that fixes them.

Each entry: a regular expression over an error message, and the hint shown next to the failure.
Add a row when a new failure teaches something; the recorded outputs under
`shared/fixtures/recorded/` are the test cases.
"""

from __future__ import annotations

import re

HINTS: list[tuple[str, str]] = [
    # Phase 50 (Kubeflow) signatures first: their messages also say "timed out" or "unreachable",
    # which the SSH rows below would claim.
    (r"missing from the offline kit|offline kit lacks",
     "record the remote base into the offline kit on a connected machine (record-kit.sh in the run folder of "
     "50_kubeflow), carry it in, and rerun 50_kubeflow"),
    (r"would be pulled from .* which the nodes cannot reach|not preloaded on .* unreachable",
     "mirror the image: set kubeflow.image_mirror.mode to registry (a private registry) or node-import "
     "(preload every node), then rerun 50_kubeflow"),
    (r"pulls on every start",
     "imagePullPolicy Always defeats preloading: 50_kubeflow rewrites it to IfNotPresent with a kustomize patch"),
    (r"rollout stuck|ProgressDeadlineExceeded|not available after|cannot become available",
     "a workload did not become available: look at its pods and events (kubectl -n NS describe pod) or run "
     "90_troubleshoot (ImagePullBackOff, Pending pods, stale webhooks); a Pending PersistentVolumeClaim needs a "
     "storage provisioner with a default StorageClass"),
    # Kubernetes signatures first: their messages also contain generic words ("connection
    # refused", "timed out") that the SSH rows below would otherwise claim.
    (r"failed calling (admission )?webhook",
     "an admission webhook has no backend: run 90_troubleshoot (stale webhooks) or wait for its deployment"),
    (r"because it is being terminated|unable to create new content in namespace|Status:\s+Terminating|"
     r"SomeResourcesRemain|SomeFinalizersRemain",
     "a namespace is stuck in Terminating: run 90_troubleshoot to see what blocks it and finalize on confirm"),
    (r"API server (down|restarting|unreachable)|API server host name",
     "the Kubernetes API server does not answer: check kubernetes.existing_kubeconfig and context point at the "
     "right cluster and that kube-apiserver runs on the control-plane host (30_kubernetes)"),
    # Cluster build (30_kubernetes, 40_istio); before the SSH rows, whose generic words they may contain.
    (r"nvidia\.com/gpu allocatable is \d+, expected \d+",
     "the node does not offer the GPUs it should: check the device plugin's pod on it (kubectl -n kube-system logs "
     "ds/nvidia-device-plugin-daemonset), the driver and that nvidia is containerd's default runtime (20_gpu_runtime); "
     "if the host really has that many GPUs, fix hosts[].gpus (00_preflight compares them); on the lab, "
     "lab.simulated_gpus sets the count"),
    # Real nodes (30_kubernetes: packages, config, cni, network); before the SSH rows, whose generic
    # words ("timed out", "unreachable") they may contain.
    (r"lab's binaries cannot be used",
     "build the lab binaries for versions.kubernetes (mlplat lab build) and check that lab.binaries_dir is the "
     "directory the lab hosts see them in; then rerun 30_kubernetes"),
    (r"cgroup v1 on this host",
     "set kubernetes.allow_cgroup_v1: true (failCgroupV1: false, SystemVerification ignored), or boot the host "
     "with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line), then rerun 30_kubernetes"),
    (r"CNI plugins missing in /opt/cni/bin",
     "install the CNI plugins (containernetworking-plugins, or kubernetes-cni with the Kubernetes packages); Debian "
     "and Ubuntu put them in /usr/lib/cni: copy or link bridge, host-local, portmap and loopback to /opt/cni/bin"),
    (r"has no spec\.podCIDR",
     "node pod ranges come from the kube-controller-manager (--allocate-node-cidrs, set by kubeadm when "
     "networking.podSubnet is set): check its pod log in kube-system and that kubernetes.pod_cidr holds a /24 "
     "per node"),
    (r"container runtime is .*not containerd",
     "the kubelet must use containerd's CRI socket (unix:///run/containerd/containerd.sock): check containerd runs "
     "(20_gpu_runtime) and the node's kubeadm-flags.env, then rerun 30_kubernetes"),
    (r"net check image .* cannot be pulled",
     "the nodes cannot pull kubernetes.net_check_image (air-gapped?): preload it on every node (ctr -n k8s.io images "
     "import) or point kubernetes.net_check_image at an image they have, then rerun 30_kubernetes"),
    (r"DNS lookup not run|Service check not run",
     "the check's pod did not finish: Pending means the node cannot start it (its CNI: the cni step; the image), "
     "Running means its lookup or fetch never got an answer (see the CoreDNS and node runtime rows); "
     "kubectl -n mlplat-netcheck-... describe pod shows the events until the namespace is gone"),
    (r"CoreDNS not ready",
     "CoreDNS stays Pending until the CNI works (the cni step; nodes NotReady say so), and crash-loops when a node's "
     "/etc/resolv.conf points at a loopback resolver (its loop plugin): kubectl -n kube-system describe/logs the "
     "coredns pods"),
    (r"DNS lookup of kubernetes\.default",
     "pods cannot resolve through CoreDNS: check the CoreDNS row first, then kube-proxy on the pod's node "
     "(kubectl -n kube-system get pods -o wide; the kube-dns ClusterIP needs it) and that pods on that node reach "
     "pods on the others (the cni step's routes or flannel)"),
    (r"Service not reachable by name or ClusterIP|Service name did not resolve",
     "a DNS fault (the name) or a kube-proxy or routing fault (the ClusterIP): check kube-proxy runs on both nodes "
     "(in a network namespace it needs conntrack.maxPerCore: 0, kubernetes.kube_proxy_config), ip_forward is 1, "
     "and each node has a route to the others' pod ranges (kubernetes.cni bridge: the cni step)"),
    (r"Depends: kubernetes-cni .* not installable",
     "the per-minor pkgs.k8s.io repository lacks the kubernetes-cni version kubelet needs (kubernetes/release#3575): "
     "point mirrors.kubernetes at a mirror that carries it, or install kubernetes-cni first, then rerun 30_kubernetes"),
    (r"unknown service runtime\.v1(alpha2)?\.RuntimeService",
     "containerd's CRI plugin is disabled or too old: regenerate /etc/containerd/config.toml (containerd config "
     "default), keep SystemdCgroup = true, restart containerd (20_gpu_runtime), then rerun 30_kubernetes"),
    (r"sandbox image .* inconsistent with that used by kubeadm",
     "containerd's sandbox (pause) image differs from kubeadm's: set it to the image 30_kubernetes' config step "
     "names (20_gpu_runtime writes it)"),
    (r"\[ERROR Port-(6443|10250)\]|\[ERROR FileAvailable--etc-kubernetes|\[ERROR DirAvailable--var-lib-etcd",
     "the host already runs, or once ran, Kubernetes: 30_kubernetes reuses a running control plane; to start over, "
     "run 99_teardown (kubeadm reset) with confirm: yes"),
    (r"could not find a JWS signature|token id .* is invalid|bootstrap token .*(expired|not found)",
     "the join token expired or was deleted: rerun the join step of 30_kubernetes, which creates a fresh one"),
    (r"violates PodSecurity",
     "a pod does not meet its namespace's Pod Security level: give it a securityContext (runAsNonRoot, "
     "allowPrivilegeEscalation false, capabilities drop ALL, seccompProfile RuntimeDefault); 40_istio does this "
     "for the Istio add-ons"),
    (r"v1beta3-only field|written as a mapping \(kubeadm|does not accept kubeadm\.k8s\.io/",
     "the kubeadm config mixes API versions: 30_kubernetes renders v1beta4 for Kubernetes 1.31+; rewrite the extra "
     "config (kubeadm_extra) the way the message says"),
    (r"Host key for .* (has changed|did not match)|REMOTE HOST IDENTIFICATION HAS CHANGED|BadHostKeyException",
     "the host's SSH key differs from the pinned one: if the host was reinstalled, remove its old line "
     "(ssh-keygen -R ADDRESS -f KNOWN_HOSTS) and add the new key after checking its fingerprint"),
    (r"not found in known_hosts|Server .* not found in known_hosts|unknown host key",
     "the host key is not pinned: add it to the known_hosts file named by ssh.known_hosts "
     "(ssh-keyscan -p PORT ADDRESS >> KNOWN_HOSTS, after checking the fingerprint)"),
    # SSH signatures from mlplat.hosts; kept above the generic "unreachable" row, which they would also match.
    (r"command timed out after",
     "the command ran longer than its timeout: if it is only slow, raise ssh.command_timeout; otherwise look on the "
     "host for what it waits on (a package manager lock, a prompt, a hung mount or driver)"),
    (r"sent no SSH banner|Error reading SSH protocol banner",
     "the port accepts connections but no SSH server answers: sshd is hung or overloaded, or another service listens "
     "there; check the host's console (load, memory) and `ss -ltnp` on it"),
    (r"secret reference: environment variable .* is not set",
     "a secret is referenced by an environment variable that is not set: export it before running (the value never "
     "goes into the params file)"),
    (r"Authentication failed|Permission denied \(publickey",
     "SSH login refused: check ssh.user and ssh.key_file, and that the public key is in the host's authorized_keys"),
    (r"sudo: a (terminal|password) is required|incorrect password attempt",
     "sudo needs a password: set ssh.sudo_password to {env: VAR} and export VAR, or allow NOPASSWD for the user"),
    (r"failed calling webhook|no endpoints available for service|webhook.*connection refused",
     "an admission webhook has no backend: run 90_troubleshoot (stale webhooks) or wait for its deployment"),
    (r"(is|being) terminating|NamespaceTerminating|stuck in Terminating",
     "a namespace is stuck in Terminating: run 90_troubleshoot to see what blocks it and finalize on confirm"),
    (r"ImagePullBackOff|ErrImagePull",
     "an image cannot be pulled: mirror or pre-load it (50_kubeflow image plan) and check imagePullPolicy"),
    (r"Insufficient nvidia\.com/gpu",
     "no node has a free nvidia.com/gpu: check 30_kubernetes (device plugin) and 20_gpu_runtime (driver, default runtime)"),
    (r"kernel-(devel|headers).*(No match|Unable to locate|not found)|No package kernel-devel",
     "the repository lacks headers for the running kernel: update the kernel and reboot, or point mirrors at the vault "
     "for that release (10_host_prep)"),
    (r"kernel headers mismatch",
     "the NVIDIA driver's DKMS build needs headers for the running kernel: update the kernel to a version the "
     "repositories carry and reboot (or add the repository that has this one), then rerun 10_host_prep"),
    (r"/dev/root does not exist",
     "the installer did not find its stage2 image: inst.stage2=hd:LABEL= must equal the USB stick's volume label "
     "exactly (spaces as \\x20), the stick must be written with dd or Fedora Media Writer (ISO-mode tools relabel it), "
     "and inst.ks must be reachable; 05_os_install writes the boot line (boot-args.txt) and lists the causes"),
    (r"Warning: /dev/(mapper/\S+|[\w.-]+/root) does not exist",
     "the installed system's root volume was not found at boot (not an install-media problem): in the dracut shell "
     "run `lvm vgscan; lvm vgchange -ay` and exit, then rebuild the initramfs (dracut -f) and check root= in GRUB"),
    (r"Continue with autoinstall\?|ds=nocloud(-net)?\s*$",
     "Ubuntu's installer did not start the unattended install: add `autoinstall` to the kernel command line and make "
     "the ds=nocloud;s=URL/ source answer (quote the ';' in GRUB); 05_os_install writes the line (boot-args.txt)"),
    (r"mirrorlist\.centos\.org|Could not retrieve mirrorlist",
     "CentOS 7 is end of life and its mirror list is gone: 10_host_prep points yum at the vault (mirrors.centos7_vault)"),
    (r"no matches for kind .* in version",
     "the manifests use an API this Kubernetes no longer serves: check the version pairing in 00_preflight"),
    # The catch-all for connection failures comes last: more specific rows above also say 'timed out'.
    (r"timed out|Connection refused|No route to host|Unable to connect|unreachable",
     "the host does not answer on its SSH port: check it is powered on, sshd runs, and no firewall drops port 22 "
     "(then rerun 00_preflight)"),
]

_COMPILED = [(re.compile(p, re.IGNORECASE), h) for p, h in HINTS]


def hint_for(message: str) -> str:
    """The first hint whose signature matches `message`, or ''."""
    for rx, h in _COMPILED:
        if rx.search(message or ""):
            return h
    return ""
