"""Cluster building blocks of phases 30, 40 and 99: kubeadm configs and plans, Kubernetes
packages, the offline bundle's add-ons, node labels and GPU checks, Istio, and teardown.

Uses ``params``, ``report``, ``hosts`` and ``kube``; never ``lab``. Most functions here are
plain (params in, data out) so that plan mode and the golden tests need no host and no cluster:

- :mod:`.kubeadm`: kubeadm config (v1beta4 from 1.31, v1beta3 before) rendered and validated,
  init/join plans, ``kubeadm token create --print-join-command`` parsed;
- :mod:`.packages`: pkgs.k8s.io (or mirror) repository files and pinned installs per OS family;
- :mod:`.bundle`: the offline kit (flannel, device plugin, Istio add-ons, Kubeflow's Istio);
- :mod:`.nodes`: node labels, GPU expectations and the Ready / ``nvidia.com/gpu`` verification;
- :mod:`.istio`: the Istio/Kubernetes/Kubeflow guard, install sources, verification, dashboards;
- :mod:`.inventory`: what mlplat applied to a cluster, the order to delete it in, host reset;
- :mod:`.kubeconfig`: which kubeconfig a site uses (existing, or the one phase 30 fetched);
- :mod:`.remote`: running a host plan (files + commands) over a HostPool, idempotently;
- :mod:`.steps`: apply / plan / rollout-wait rows shared by the cluster phases.
"""
