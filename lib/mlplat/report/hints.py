"""Known error signatures mapped to the step or notebook that fixes them.

Each entry: a regular expression over an error message, and the hint shown next to the failure.
Add a row when a new failure teaches something; the recorded outputs under
`shared/fixtures/recorded/` are the test cases.
"""

from __future__ import annotations

import re

HINTS: list[tuple[str, str]] = [
    (r"Host key for .* (has changed|did not match)|REMOTE HOST IDENTIFICATION HAS CHANGED|BadHostKeyException",
     "the host's SSH key differs from the pinned one: if the host was reinstalled, remove its old line "
     "(ssh-keygen -R ADDRESS -f KNOWN_HOSTS) and add the new key after checking its fingerprint"),
    (r"not found in known_hosts|Server .* not found in known_hosts|unknown host key",
     "the host key is not pinned: add it to the known_hosts file named by ssh.known_hosts "
     "(ssh-keyscan -p PORT ADDRESS >> KNOWN_HOSTS, after checking the fingerprint)"),
    (r"timed out|Connection refused|No route to host|Unable to connect|unreachable",
     "the host does not answer on its SSH port: check it is powered on, sshd runs, and no firewall drops port 22 "
     "(then rerun 00_preflight)"),
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
    (r"/dev/root does not exist|Could not boot",
     "the installer did not find its stage2 image: the inst.stage2=hd:LABEL= value must equal the USB volume label "
     "exactly (spaces as \\x20); see 05_os_install"),
    (r"mirrorlist\.centos\.org|Could not retrieve mirrorlist",
     "CentOS 7 is end of life and its mirror list is gone: 10_host_prep points yum at the vault (mirrors.centos7_vault)"),
    (r"no matches for kind .* in version",
     "the manifests use an API this Kubernetes no longer serves: check the version pairing in 00_preflight"),
]

_COMPILED = [(re.compile(p, re.IGNORECASE), h) for p, h in HINTS]


def hint_for(message: str) -> str:
    """The first hint whose signature matches `message`, or ''."""
    for rx, h in _COMPILED:
        if rx.search(message or ""):
            return h
    return ""
