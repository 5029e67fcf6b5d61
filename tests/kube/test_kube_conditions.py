"""Readiness conditions of wait_for, on object shapes the API server returns (no cluster)."""

from __future__ import annotations

import pytest

from mlplat.kube.wait import WaitFailed, checker, crd_established, deployment_available, job_complete


def _dep(gen=2, observed=2, replicas=2, updated=2, available=2, avail_cond="True"):
    return {"kind": "Deployment", "metadata": {"generation": gen}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "availableReplicas": available,
                       "conditions": [{"type": "Available", "status": avail_cond, "reason": "R"}]}}


def test_deployment_available_needs_an_observed_and_complete_rollout():
    assert deployment_available(_dep())[0]
    assert not deployment_available(_dep(observed=1))[0]
    assert not deployment_available(_dep(updated=1))[0]
    done, why = deployment_available(_dep(available=1, avail_cond="False"))
    assert not done and "1/2 replicas available" in why


def test_job_failed_ends_the_wait():
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    with pytest.raises(WaitFailed, match="BackoffLimitExceeded"):
        job_complete(job)


def test_generic_condition_and_its_terminal_opposite():
    name, check = checker("PyTorchJob", "Succeeded")
    assert name == "Succeeded"
    assert check({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}})[0]
    with pytest.raises(WaitFailed):
        check({"status": {"conditions": [{"type": "Failed", "status": "True"}]}})


def test_crd_established():
    crd = {"status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                     {"type": "Established", "status": "True"}]}}
    assert crd_established(crd)[0]
    crd["status"]["conditions"][0]["status"] = "False"
    assert not crd_established(crd)[0]


def test_default_conditions_per_kind():
    assert checker("Deployment", None)[0] == "Available"
    assert checker("Job", None)[0] == "Complete"
    assert checker("Namespace", "Deleted") == ("Deleted", None)
