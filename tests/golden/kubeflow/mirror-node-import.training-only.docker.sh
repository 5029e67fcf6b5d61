# --- on a connected staging machine: pull, tag, save ---
# 18 image(s), platform linux/amd64, archives in /srv/kubeflow-images
set -euo pipefail
mkdir -p /srv/kubeflow-images
# [1/18] docker.io/library/busybox:1.28
docker pull --platform linux/amd64 registry.example.internal:5000/docker.io/library/busybox:1.28
docker tag registry.example.internal:5000/docker.io/library/busybox:1.28 docker.io/library/busybox:1.28
docker save -o /srv/kubeflow-images/docker.io_library_busybox_1.28.tar docker.io/library/busybox:1.28
# [2/18] docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
docker pull --platform linux/amd64 registry.example.internal:5000/docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
docker tag registry.example.internal:5000/docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
docker save -o /srv/kubeflow-images/docker.io_pytorch_pytorch_2.7.1-cuda12.8-cudnn9-runtime.tar docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
# [3/18] gcr.io/istio-release/install-cni:1.28.0
docker pull --platform linux/amd64 registry.example.internal:5000/gcr.io/istio-release/install-cni:1.28.0
docker tag registry.example.internal:5000/gcr.io/istio-release/install-cni:1.28.0 gcr.io/istio-release/install-cni:1.28.0
docker save -o /srv/kubeflow-images/gcr.io_istio-release_install-cni_1.28.0.tar gcr.io/istio-release/install-cni:1.28.0
# [4/18] gcr.io/istio-release/pilot:1.28.0
docker pull --platform linux/amd64 registry.example.internal:5000/gcr.io/istio-release/pilot:1.28.0
docker tag registry.example.internal:5000/gcr.io/istio-release/pilot:1.28.0 gcr.io/istio-release/pilot:1.28.0
docker save -o /srv/kubeflow-images/gcr.io_istio-release_pilot_1.28.0.tar gcr.io/istio-release/pilot:1.28.0
# [5/18] gcr.io/istio-release/proxyv2:1.28.0
docker pull --platform linux/amd64 registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.28.0
docker tag registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.28.0 gcr.io/istio-release/proxyv2:1.28.0
docker save -o /srv/kubeflow-images/gcr.io_istio-release_proxyv2_1.28.0.tar gcr.io/istio-release/proxyv2:1.28.0
# [6/18] gcr.io/istio-release/proxyv2:1.29.0
docker pull --platform linux/amd64 registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.29.0
docker tag registry.example.internal:5000/gcr.io/istio-release/proxyv2:1.29.0 gcr.io/istio-release/proxyv2:1.29.0
docker save -o /srv/kubeflow-images/gcr.io_istio-release_proxyv2_1.29.0.tar gcr.io/istio-release/proxyv2:1.29.0
# [7/18] ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0 ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_dataset-initializer_v2.1.0.tar ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
# [8/18] ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0 ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_deepspeed-runtime_v2.1.0.tar ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
# [9/18] ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0 ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_mlx-runtime_v2.1.0.tar ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
# [10/18] ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/model-initializer:v2.1.0 ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_model-initializer_v2.1.0.tar ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
# [11/18] ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0 ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_torchtune-trainer_v2.1.0.tar ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
# [12/18] ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
docker tag registry.example.internal:5000/ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0 ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_trainer_trainer-controller-manager_v2.1.0.tar ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
# [13/18] ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
docker pull --platform linux/amd64 registry.example.internal:5000/ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
docker tag registry.example.internal:5000/ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8 ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
docker save -o /srv/kubeflow-images/ghcr.io_kubeflow_training-v1_training-operator_v1-3f15cb8.tar ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
# [14/18] quay.io/jetstack/cert-manager-acmesolver:v1.19.4
docker pull --platform linux/amd64 registry.example.internal:5000/quay.io/jetstack/cert-manager-acmesolver:v1.19.4
docker tag registry.example.internal:5000/quay.io/jetstack/cert-manager-acmesolver:v1.19.4 quay.io/jetstack/cert-manager-acmesolver:v1.19.4
docker save -o /srv/kubeflow-images/quay.io_jetstack_cert-manager-acmesolver_v1.19.4.tar quay.io/jetstack/cert-manager-acmesolver:v1.19.4
# [15/18] quay.io/jetstack/cert-manager-cainjector:v1.19.4
docker pull --platform linux/amd64 registry.example.internal:5000/quay.io/jetstack/cert-manager-cainjector:v1.19.4
docker tag registry.example.internal:5000/quay.io/jetstack/cert-manager-cainjector:v1.19.4 quay.io/jetstack/cert-manager-cainjector:v1.19.4
docker save -o /srv/kubeflow-images/quay.io_jetstack_cert-manager-cainjector_v1.19.4.tar quay.io/jetstack/cert-manager-cainjector:v1.19.4
# [16/18] quay.io/jetstack/cert-manager-controller:v1.19.4
docker pull --platform linux/amd64 registry.example.internal:5000/quay.io/jetstack/cert-manager-controller:v1.19.4
docker tag registry.example.internal:5000/quay.io/jetstack/cert-manager-controller:v1.19.4 quay.io/jetstack/cert-manager-controller:v1.19.4
docker save -o /srv/kubeflow-images/quay.io_jetstack_cert-manager-controller_v1.19.4.tar quay.io/jetstack/cert-manager-controller:v1.19.4
# [17/18] quay.io/jetstack/cert-manager-webhook:v1.19.4
docker pull --platform linux/amd64 registry.example.internal:5000/quay.io/jetstack/cert-manager-webhook:v1.19.4
docker tag registry.example.internal:5000/quay.io/jetstack/cert-manager-webhook:v1.19.4 quay.io/jetstack/cert-manager-webhook:v1.19.4
docker save -o /srv/kubeflow-images/quay.io_jetstack_cert-manager-webhook_v1.19.4.tar quay.io/jetstack/cert-manager-webhook:v1.19.4
# [18/18] registry.k8s.io/jobset/jobset:v0.10.1
docker pull --platform linux/amd64 registry.example.internal:5000/registry.k8s.io/jobset/jobset:v0.10.1
docker tag registry.example.internal:5000/registry.k8s.io/jobset/jobset:v0.10.1 registry.k8s.io/jobset/jobset:v0.10.1
docker save -o /srv/kubeflow-images/registry.k8s.io_jobset_jobset_v0.10.1.tar registry.k8s.io/jobset/jobset:v0.10.1
# --- carry the archives in, then per host: copy and import (images already present are skipped) ---
# node-a: 18 to import, 0 already present (not probed)
ssh ops@10.0.0.11 mkdir -p /var/tmp/mlplat-images
# [1/18] docker.io/library/busybox:1.28
scp /srv/kubeflow-images/docker.io_library_busybox_1.28.tar ops@10.0.0.11:/var/tmp/mlplat-images/docker.io_library_busybox_1.28.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/docker.io_library_busybox_1.28.tar && rm -f /var/tmp/mlplat-images/docker.io_library_busybox_1.28.tar'
# [2/18] docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
scp /srv/kubeflow-images/docker.io_pytorch_pytorch_2.7.1-cuda12.8-cudnn9-runtime.tar ops@10.0.0.11:/var/tmp/mlplat-images/docker.io_pytorch_pytorch_2.7.1-cuda12.8-cudnn9-runtime.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/docker.io_pytorch_pytorch_2.7.1-cuda12.8-cudnn9-runtime.tar && rm -f /var/tmp/mlplat-images/docker.io_pytorch_pytorch_2.7.1-cuda12.8-cudnn9-runtime.tar'
# [3/18] gcr.io/istio-release/install-cni:1.28.0
scp /srv/kubeflow-images/gcr.io_istio-release_install-cni_1.28.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/gcr.io_istio-release_install-cni_1.28.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/gcr.io_istio-release_install-cni_1.28.0.tar && rm -f /var/tmp/mlplat-images/gcr.io_istio-release_install-cni_1.28.0.tar'
# [4/18] gcr.io/istio-release/pilot:1.28.0
scp /srv/kubeflow-images/gcr.io_istio-release_pilot_1.28.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/gcr.io_istio-release_pilot_1.28.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/gcr.io_istio-release_pilot_1.28.0.tar && rm -f /var/tmp/mlplat-images/gcr.io_istio-release_pilot_1.28.0.tar'
# [5/18] gcr.io/istio-release/proxyv2:1.28.0
scp /srv/kubeflow-images/gcr.io_istio-release_proxyv2_1.28.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.28.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.28.0.tar && rm -f /var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.28.0.tar'
# [6/18] gcr.io/istio-release/proxyv2:1.29.0
scp /srv/kubeflow-images/gcr.io_istio-release_proxyv2_1.29.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.29.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.29.0.tar && rm -f /var/tmp/mlplat-images/gcr.io_istio-release_proxyv2_1.29.0.tar'
# [7/18] ghcr.io/kubeflow/trainer/dataset-initializer:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_dataset-initializer_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_dataset-initializer_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_dataset-initializer_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_dataset-initializer_v2.1.0.tar'
# [8/18] ghcr.io/kubeflow/trainer/deepspeed-runtime:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_deepspeed-runtime_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_deepspeed-runtime_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_deepspeed-runtime_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_deepspeed-runtime_v2.1.0.tar'
# [9/18] ghcr.io/kubeflow/trainer/mlx-runtime:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_mlx-runtime_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_mlx-runtime_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_mlx-runtime_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_mlx-runtime_v2.1.0.tar'
# [10/18] ghcr.io/kubeflow/trainer/model-initializer:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_model-initializer_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_model-initializer_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_model-initializer_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_model-initializer_v2.1.0.tar'
# [11/18] ghcr.io/kubeflow/trainer/torchtune-trainer:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_torchtune-trainer_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_torchtune-trainer_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_torchtune-trainer_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_torchtune-trainer_v2.1.0.tar'
# [12/18] ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.1.0
scp /srv/kubeflow-images/ghcr.io_kubeflow_trainer_trainer-controller-manager_v2.1.0.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_trainer-controller-manager_v2.1.0.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_trainer-controller-manager_v2.1.0.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_trainer_trainer-controller-manager_v2.1.0.tar'
# [13/18] ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8
scp /srv/kubeflow-images/ghcr.io_kubeflow_training-v1_training-operator_v1-3f15cb8.tar ops@10.0.0.11:/var/tmp/mlplat-images/ghcr.io_kubeflow_training-v1_training-operator_v1-3f15cb8.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/ghcr.io_kubeflow_training-v1_training-operator_v1-3f15cb8.tar && rm -f /var/tmp/mlplat-images/ghcr.io_kubeflow_training-v1_training-operator_v1-3f15cb8.tar'
# [14/18] quay.io/jetstack/cert-manager-acmesolver:v1.19.4
scp /srv/kubeflow-images/quay.io_jetstack_cert-manager-acmesolver_v1.19.4.tar ops@10.0.0.11:/var/tmp/mlplat-images/quay.io_jetstack_cert-manager-acmesolver_v1.19.4.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-acmesolver_v1.19.4.tar && rm -f /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-acmesolver_v1.19.4.tar'
# [15/18] quay.io/jetstack/cert-manager-cainjector:v1.19.4
scp /srv/kubeflow-images/quay.io_jetstack_cert-manager-cainjector_v1.19.4.tar ops@10.0.0.11:/var/tmp/mlplat-images/quay.io_jetstack_cert-manager-cainjector_v1.19.4.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-cainjector_v1.19.4.tar && rm -f /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-cainjector_v1.19.4.tar'
# [16/18] quay.io/jetstack/cert-manager-controller:v1.19.4
scp /srv/kubeflow-images/quay.io_jetstack_cert-manager-controller_v1.19.4.tar ops@10.0.0.11:/var/tmp/mlplat-images/quay.io_jetstack_cert-manager-controller_v1.19.4.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-controller_v1.19.4.tar && rm -f /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-controller_v1.19.4.tar'
# [17/18] quay.io/jetstack/cert-manager-webhook:v1.19.4
scp /srv/kubeflow-images/quay.io_jetstack_cert-manager-webhook_v1.19.4.tar ops@10.0.0.11:/var/tmp/mlplat-images/quay.io_jetstack_cert-manager-webhook_v1.19.4.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-webhook_v1.19.4.tar && rm -f /var/tmp/mlplat-images/quay.io_jetstack_cert-manager-webhook_v1.19.4.tar'
# [18/18] registry.k8s.io/jobset/jobset:v0.10.1
scp /srv/kubeflow-images/registry.k8s.io_jobset_jobset_v0.10.1.tar ops@10.0.0.11:/var/tmp/mlplat-images/registry.k8s.io_jobset_jobset_v0.10.1.tar
ssh ops@10.0.0.11 'sudo docker load -i /var/tmp/mlplat-images/registry.k8s.io_jobset_jobset_v0.10.1.tar && rm -f /var/tmp/mlplat-images/registry.k8s.io_jobset_jobset_v0.10.1.tar'
