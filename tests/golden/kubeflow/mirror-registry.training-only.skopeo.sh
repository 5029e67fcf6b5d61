# mirror 18 image(s) into registry.example.internal:5000 (skopeo)
set -euo pipefail
# [1/18] docker.io/library/busybox:1.28
skopeo copy --all --preserve-digests --retry-times 3 docker://docker.io/library/busybox:1.28 docker://registry.example.internal:5000/docker.io/library/busybox:1.28
# [2/18] docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
skopeo copy --all --preserve-digests --retry-times 3 docker://docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime docker://registry.example.internal:5000/docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
# [3/18] gcr.io/istio-release/install-cni:1.28.0
skopeo copy --all --preserve-digests --retry-times 3 docker://gcr.io/istio-release/install-cni:1.28.0 docker://registry.example.internal:5000/gcr.io/istio-release/install-cni:1.28.0
# [4/18] gcr.io/istio-release/pilot:1.28.0
skopeo copy --all --preserve-digests --retry-times 3 docker://gcr.io/istio-release/pilot:1.28.0 docker://registry.example.internal:5000/gcr.io/istio-release/pilot:1.28.0
# [5/18] gcr.io/istio-release/proxyv2:1.28.0
skopeo copy --all --preserve-digests --retry-times 3 docker://gcr.io/istio-release/proxyv2:1.28.0 docker://registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.28.0
# [6/18] gcr.io/istio-release/proxyv2:1.29.0
skopeo copy --all --preserve-digests --retry-times 3 docker://gcr.io/istio-release/proxyv2:1.29.0 docker://registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.29.0
# [7/18] ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
# [8/18] ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
# [9/18] ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
# [10/18] ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/model-initializer:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
# [11/18] ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
# [12/18] ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0 docker://registry.example.internal:5000/ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
# [13/18] ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
skopeo copy --all --preserve-digests --retry-times 3 docker://ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8 docker://registry.example.internal:5000/ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
# [14/18] quay.io/jetstack/cert-manager-acmesolver:v1.19.4
skopeo copy --all --preserve-digests --retry-times 3 docker://quay.io/jetstack/cert-manager-acmesolver:v1.19.4 docker://registry.example.internal:5000/quay.io/jetstack/cert-manager-acmesolver:v1.19.4
# [15/18] quay.io/jetstack/cert-manager-cainjector:v1.19.4
skopeo copy --all --preserve-digests --retry-times 3 docker://quay.io/jetstack/cert-manager-cainjector:v1.19.4 docker://registry.example.internal:5000/quay.io/jetstack/cert-manager-cainjector:v1.19.4
# [16/18] quay.io/jetstack/cert-manager-controller:v1.19.4
skopeo copy --all --preserve-digests --retry-times 3 docker://quay.io/jetstack/cert-manager-controller:v1.19.4 docker://registry.example.internal:5000/quay.io/jetstack/cert-manager-controller:v1.19.4
# [17/18] quay.io/jetstack/cert-manager-webhook:v1.19.4
skopeo copy --all --preserve-digests --retry-times 3 docker://quay.io/jetstack/cert-manager-webhook:v1.19.4 docker://registry.example.internal:5000/quay.io/jetstack/cert-manager-webhook:v1.19.4
# [18/18] registry.k8s.io/jobset/jobset:v0.10.1
skopeo copy --all --preserve-digests --retry-times 3 docker://registry.k8s.io/jobset/jobset:v0.10.1 docker://registry.example.internal:5000/registry.k8s.io/jobset/jobset:v0.10.1
