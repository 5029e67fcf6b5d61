"""The compatibility table drives validation: known good and known bad stacks."""

from __future__ import annotations

import pytest

from mlplat.params.versions import check_stack, kubeadm_api_versions, parse_version

DEFAULT = {"kubernetes": "1.34.4", "istio": "1.28.0", "kubeflow": "26.03", "cuda": "13.0", "nvidia_driver": "580",
           "containerd": "2.1.4", "nvidia_container_toolkit": "1.18.0", "training_operator": "1.9.2",
           "trainer": "2.1.0"}


def test_default_stack_is_compatible():
    assert check_stack(DEFAULT) == []


@pytest.mark.parametrize("change,path,words", [
    ({"kubernetes": "1.30.0"}, "versions.kubeflow", "supports Kubernetes 1.34+"),
    ({"istio": "1.4.3"}, "versions.istio", "Istio 1.4 supports Kubernetes 1.13-1.16"),
    ({"nvidia_driver": "535"}, "versions.cuda", "needs NVIDIA driver >= 580"),
    ({"nvidia_container_toolkit": "1.16.2"}, "versions.nvidia_container_toolkit", "config version 3"),
    ({"kubeflow": "1.9", "istio": "1.22.1"}, "versions.kubeflow", "supports Kubernetes 1.29-1.31"),
    ({"istio": "1.29.0"}, "versions.istio", "ships and is validated with Istio 1.28"),
])
def test_incompatible_pairs(change, path, words):
    found = check_stack({**DEFAULT, **change})
    assert any(i.path == path and words in i.message for i in found), found
    assert all(i.fix for i in found)


def test_cuda12_on_r535_is_fine():
    assert not [i for i in check_stack({**DEFAULT, "cuda": "12.4", "nvidia_driver": "535"}) if i.path == "versions.cuda"]


def test_kubeadm_api_by_minor():
    assert kubeadm_api_versions((1, 34))[0] == "kubeadm.k8s.io/v1beta4"
    assert "kubeadm.k8s.io/v1beta4" not in kubeadm_api_versions((1, 30))
    assert kubeadm_api_versions((1, 30))[0] == "kubeadm.k8s.io/v1beta3"


def test_parse_version():
    assert parse_version("v1.34.4") == (1, 34, 4)
    with pytest.raises(ValueError):
        parse_version("latest")
