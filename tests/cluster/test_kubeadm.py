"""kubeadm config, validation and plans (mlplat.cluster.kubeadm), checked against the real kubeadm
v1.34.4 from the lab build and against golden files; join commands parsed from recorded outputs."""

from __future__ import annotations

import pytest

from mlplat.cluster import kubeadm as k
from mlplat.params import load_params
from mlplat.params.load import ParamsError
from mlplat.params.versions import PAUSE_IMAGE

from cluster_helpers import SITE, golden


@pytest.fixture(scope="module")
def site():
    return load_params(SITE)


def _join_info(recorded) -> k.JoinInfo:
    return k.parse_join_command((recorded / "kubeadm" / "token-create-print-join-command.v1.9-order.kubeadm-659.txt")
                                .read_text())


# -- rendering and the real kubeadm ---------------------------------------------------------------

def test_three_node_gpu_config_passes_real_kubeadm_validate(site, kubeadm_bin, recorded):
    docs = k.render_init(site)
    assert [d["apiVersion"] for d in docs[:2]] == [k.V1BETA4] * 2
    assert k.validate_config(docs, site.versions.kubernetes, site.hosts) == []
    text = k.dump_docs(docs)
    assert k.kubeadm_version(kubeadm_bin) == "v1.34.4"
    ok, out = k.kubeadm_validate(text, kubeadm_bin)
    assert ok, out
    # Every join config (one per worker, with a real-format token and CA hash) passes too.
    info = _join_info(recorded)
    for h in k.joining_hosts(site):
        jt = k.dump_docs(k.render_join(site, h, info))
        ok, out = k.kubeadm_validate(jt, kubeadm_bin)
        assert ok, f"{h.name}: {out}"


def test_images_and_sandbox_image_agree_with_kubeadm(site, kubeadm_bin):
    images = k.kubeadm_images(k.dump_docs(k.render_init(site)), kubeadm_bin)
    assert k.sandbox_image(site) in images
    assert k.sandbox_image(site) == f"registry.k8s.io/pause:{PAUSE_IMAGE[(1, 34)]}"
    assert "registry.k8s.io/kube-apiserver:v1.34.4" in images


def test_offline_image_repository_flows_into_every_image(site, kubeadm_bin):
    p = site.model_copy(deep=True)
    p.kubernetes.image_repository = "registry.example.internal:5000/k8s"
    text = k.dump_docs(k.render_init(p))
    images = k.kubeadm_images(text, kubeadm_bin)
    assert all(i.startswith("registry.example.internal:5000/k8s/") for i in images), images
    assert k.sandbox_image(p) in images


def test_control_plane_that_trains_is_untainted_and_pure_control_plane_keeps_taint(site):
    init = k.render_init(site)[0]
    assert init["nodeRegistration"]["taints"] == []
    p = site.model_copy(deep=True)
    p.hosts[0].roles = ["control-plane"]
    assert "taints" not in k.render_init(p)[0]["nodeRegistration"]


def test_v1beta3_for_older_kubernetes_and_accepted_by_kubeadm_134(site, kubeadm_bin):
    p = site.model_copy(deep=True)
    p.versions.kubernetes = "1.30.14"
    docs = k.render_init(p)
    assert docs[0]["apiVersion"] == k.V1BETA3
    assert docs[0]["nodeRegistration"]["kubeletExtraArgs"] == {"node-ip": "10.20.0.11"}  # a map in v1beta3
    assert k.errors(k.validate_config(docs, "1.30.14", p.hosts)) == []
    # kubeadm 1.34 still reads v1beta3 (deprecated): our v1beta3 shape is one kubeadm accepts.
    docs134 = k.render_init(site, api_version="v1beta3")
    warnings = k.validate_config(docs134, "1.34.4", site.hosts)
    assert warnings and all(w.severity == "warning" and "deprecated" in w.message for w in warnings)
    ok, out = k.kubeadm_validate(k.dump_docs(docs134), kubeadm_bin)
    assert ok, out


# -- what validation refuses ----------------------------------------------------------------------

# A 2021-era snippet an operator might paste into kubeadm_extra for a 1.34 cluster.
OLD_SNIPPET = """
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
apiServer:
  timeoutForControlPlane: 4m0s
  extraArgs:
    audit-log-path: /var/log/kubernetes/audit.log
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
nodeRegistration:
  kubeletExtraArgs:
    max-pods: "200"
"""


def test_v1beta3_only_fields_on_134_are_refused_with_their_replacement(site, kubeadm_bin, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(OLD_SNIPPET)
    docs = k.merge_extra(k.render_init(site), k.load_extra(extra))
    assert docs[1]["apiVersion"] == k.V1BETA4  # the rendered version stays; the fields are checked against it
    errs = k.errors(k.validate_config(docs, "1.34.4", site.hosts))
    text = "\n".join(map(str, errs))
    assert len(errs) == 3, text
    assert "apiServer.timeoutForControlPlane: a kubeadm.k8s.io/v1beta3-only field" in text
    assert "use InitConfiguration/JoinConfiguration timeouts.controlPlaneComponentHealthCheck" in text
    assert "apiServer.extraArgs: written as a mapping" in text
    assert "write extraArgs: [{name: audit-log-path, value: /var/log/kubernetes/audit.log}]" in text
    assert "nodeRegistration.kubeletExtraArgs: written as a mapping" in text
    # The real kubeadm refuses it too, less helpfully (one error at a time, a Go type name).
    ok, out = k.kubeadm_validate(k.dump_docs(docs), kubeadm_bin)
    assert not ok and "v1beta4" in out


def test_join_discovery_timeout_is_v1beta3_only(site, recorded):
    docs = k.render_join(site, site.hosts[1], _join_info(recorded))
    docs[0]["discovery"]["timeout"] = "5m0s"
    errs = k.errors(k.validate_config(docs, "1.34.4"))
    assert any("discovery.timeout" in p.where and "timeouts.discovery" in p.fix for p in errs)


def test_v1beta4_fields_in_a_v1beta3_config_and_unaccepted_api_versions(site):
    p = site.model_copy(deep=True)
    p.versions.kubernetes = "1.30.14"
    docs = k.render_init(p)
    docs[0]["timeouts"] = {"controlPlaneComponentHealthCheck": "4m0s"}
    errs = k.errors(k.validate_config(docs, "1.30.14", p.hosts))
    assert any("v1beta4-only field" in e.message and e.where.endswith("timeouts") for e in errs)
    v4 = k.render_init(site)  # v1beta4 documents for a 1.30 cluster
    errs = k.errors(k.validate_config(v4, "1.30.14", p.hosts))
    assert errs and "kubeadm 1.30 does not accept kubeadm.k8s.io/v1beta4" in errs[0].message
    errs = k.errors(k.validate_config(k.render_init(site, api_version="v1beta3"), "1.37.0", site.hosts))
    assert errs and "does not accept kubeadm.k8s.io/v1beta3" in errs[0].message


def test_pod_cidr_overlapping_service_cidr_is_refused_where_kubeadm_accepts_it(site, kubeadm_bin, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("kind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.96.0.0/16\n")
    docs = k.merge_extra(k.render_init(site), k.load_extra(extra))
    errs = k.errors(k.validate_config(docs, "1.34.4", site.hosts))
    assert len(errs) == 1
    assert "pod CIDR 10.96.0.0/16 overlaps service CIDR 10.96.0.0/12" in errs[0].message
    assert "kubernetes.pod_cidr" in errs[0].fix
    ok, _ = k.kubeadm_validate(k.dump_docs(docs), kubeadm_bin)
    assert ok, "kubeadm 1.34 accepts overlapping ranges: this check is ours to make"


def test_params_with_overlapping_cidrs_do_not_even_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SITE.read_text().replace("pod_cidr: 10.244.0.0/16", "pod_cidr: 10.100.0.0/16"))
    with pytest.raises(ParamsError) as e:
        load_params(bad)
    assert "overlaps service CIDR" in str(e.value)


@pytest.mark.parametrize("pod,svc,needle", [
    ("10.244.0.0/25", "10.96.0.0/12", "smaller than one node's /24"),
    ("10.244.0.0/16", "10.0.0.0/8", "too large"),
    ("10.20.0.0/16", "10.96.0.0/12", "gpu-1 (10.20.0.11) lies inside the pod CIDR"),
    ("10.244.0.0/23", "10.96.0.0/12", "fewer than the 3 hosts"),
])
def test_other_network_mistakes(site, pod, svc, needle):
    docs = k.render_init(site)
    docs[1]["networking"].update(podSubnet=pod, serviceSubnet=svc)
    text = "\n".join(map(str, k.errors(k.validate_config(docs, "1.34.4", site.hosts))))
    assert needle in text


def test_several_control_planes_need_an_endpoint(site):
    p = site.model_copy(deep=True)
    p.hosts[1].roles = ["control-plane", "worker"]
    docs = k.render_init(p)
    docs[1].pop("controlPlaneEndpoint")
    errs = k.errors(k.validate_config(docs, "1.34.4", p.hosts))
    assert any("2 control-plane hosts need a shared endpoint" in e.message for e in errs)
    warn = k.validate_config(k.render_init(p), "1.34.4", p.hosts)
    assert any(w.severity == "warning" and "is one control-plane host" in w.message for w in warn)


# -- join commands from recorded outputs ----------------------------------------------------------

def test_parse_join_from_token_create_outputs(recorded):
    d = recorded / "kubeadm"
    j = k.parse_join_command((d / "token-create-print-join-command.pr-56185-example.txt").read_text())
    assert (j.endpoint, j.token) == ("192.168.99.100:8443", "447067.20b55955bd6abe6c")
    assert j.ca_cert_hashes == ["sha256:17023a5c90b996e50c514e63e161e46f78be216fd48c0c3df3be67e008b28889"]
    # kubeadm ~1.9 printed --token before the endpoint
    j = k.parse_join_command((d / "token-create-print-join-command.v1.9-order.kubeadm-659.txt").read_text())
    assert (j.endpoint, j.token_id) == ("10.0.2.66:6443", "5d2dc8")
    assert j.command() == ("kubeadm join 10.0.2.66:6443 --token 5d2dc8.**************** "
                           "--discovery-token-ca-cert-hash sha256:44a68d4a2c2a86e05cc0d4ee8c9c6b64352c54e450021331c483561e45b34388")


def test_parse_join_from_init_output_with_old_wording(recorded):
    text = (recorded / "kubeadm" / "kubeadm-init.tail.old-master-wording.kube-batch-324.excerpt.txt").read_text()
    j = k.parse_join_command(text, control_plane=False)
    assert (j.endpoint, j.token) == ("172.18.0.2:6443", "sr89p7.6qtf5dpaj6useikx")


def test_masked_or_cut_join_commands_are_refused_clearly(recorded):
    d = recorded / "kubeadm"
    # The poster masked the hash with b's (58 of them): not a hash; a klog line comes first.
    with pytest.raises(k.JoinParseError, match=r"is not sha256:<64 hex digits> \(masked or cut"):
        k.parse_join_command((d / "token-create-print-join-command.v1.11.with-klog-line.kubeadm2ha-18.txt").read_text())
    # Every line carries a log tag, the token is withheld and the excerpt ends mid-command.
    with pytest.raises(k.JoinParseError) as e:
        k.parse_join_command((d / "kubeadm-init.tail.control-plane-wording.prefixed.raspbernetes-8.excerpt.txt")
                             .read_text())
    assert "not a bootstrap token" in str(e.value) and "withheld" in str(e.value)
    assert "no --discovery-token-ca-cert-hash" in str(e.value)
    with pytest.raises(k.JoinParseError, match="no 'kubeadm join' command"):
        k.parse_join_command("W1128 some klog line\n")


def test_control_plane_join_with_certificate_key():
    key = "a" * 64
    text = (f"kubeadm join lb.example:6443 --token abcdef.0123456789abcdef \\\n"
            f"    --discovery-token-ca-cert-hash sha256:{'b' * 64} \\\n    --control-plane --certificate-key {key}\n\n"
            f"kubeadm join lb.example:6443 --token abcdef.0123456789abcdef \\\n"
            f"    --discovery-token-ca-cert-hash sha256:{'b' * 64}\n")
    cp = k.parse_join_command(text, control_plane=True)
    w = k.parse_join_command(text, control_plane=False)
    assert cp.certificate_key == key and cp.control_plane and not w.control_plane
    assert k.parse_certificate_key(f"[upload-certs] Using certificate key:\n{key}\n") == key


# -- golden plans -----------------------------------------------------------------------------------

def test_golden_kubeadm_config(site):
    golden("kubeadm-init-3gpu.yaml", k.dump_docs(k.render_init(site)))


def test_golden_init_plan(site):
    text = k.dump_docs(k.render_init(site))
    golden("init-plan-3gpu.txt", k.plan_text(k.init_plan(site, text) + k.token_step(site) + k.kubeconfig_step(site)))


def test_golden_join_plan_with_placeholders(site):
    golden("join-plan-3gpu.plan-mode.txt", k.plan_text(k.join_plan(site) + k.token_cleanup(site, None)))


def test_golden_join_plan_with_a_parsed_token_is_masked(site, recorded):
    info = _join_info(recorded)
    text = k.plan_text(k.join_plan(site, info) + k.token_cleanup(site, info))
    assert info.token not in text and "5d2dc8.****************" in text
    assert "kubeadm token delete 5d2dc8" in text
    golden("join-plan-3gpu.recorded-token.txt", text)


def test_golden_ha_plan(site, kubeadm_bin):
    p = site.model_copy(deep=True)
    p.hosts[1].roles = ["control-plane", "worker"]
    p.kubernetes.control_plane_endpoint = "k8s-api.gpu-lab.internal"
    text = k.dump_docs(k.render_init(p))
    assert k.errors(k.validate_config(k.render_init(p), "1.34.4", p.hosts)) == []
    key = "c" * 64
    info = k.JoinInfo("k8s-api.gpu-lab.internal:6443", "abcdef.0123456789abcdef", ["sha256:" + "d" * 64])
    plan = k.init_plan(p, text) + k.token_step(p) + k.join_plan(p, info, key)
    out = k.plan_text(plan)
    assert "--upload-certs" in out and "kubeadm init phase upload-certs --upload-certs" in out
    assert key not in out and "certificateKey: ****" in out
    golden("ha-plan.txt", out)
    ok, msg = k.kubeadm_validate(k.dump_docs(k.render_join(p, p.hosts[1], info, certificate_key=key)), kubeadm_bin)
    assert ok, msg


def test_an_existing_cluster_is_reused_only_when_it_matches(site):
    live = k.dump_docs([k.render_init(site)[1]])
    assert k.compare_existing(live, site) == []
    other = live.replace("podSubnet: 10.244.0.0/16", "podSubnet: 192.168.0.0/16").replace("v1.34.4", "v1.33.7")
    diffs = k.compare_existing(other, site)
    assert diffs == ["it runs Kubernetes v1.33.7, the params pin v1.34.4",
                     "its podSubnet is 192.168.0.0/16, kubernetes.pod_cidr is 10.244.0.0/16"]


def test_phase_config_step_refuses_an_old_snippet_before_any_host_is_touched(tmp_path, kubeadm_bin, monkeypatch):
    from mlplat.phases import kubernetes as phase
    from mlplat.report import PhaseFailed

    monkeypatch.setenv("MLPLAT_KUBEADM", str(kubeadm_bin))
    extra = tmp_path / "extra.yaml"
    extra.write_text(OLD_SNIPPET)
    phase.setup(params_file=str(SITE), mode="apply", kubeadm_extra=str(extra))
    phase.config()
    phase.init()
    rows = phase._ctx().phase.steps
    assert sum(not r.ok for r in rows["config"]) == 3
    assert rows["init"][0].skipped and "config was refused" in rows["init"][0].message
    assert phase._ctx().extra.get("pool") is None  # no SSH connection was even opened
    with pytest.raises(PhaseFailed) as e:
        phase.finish()
    assert "timeouts.controlPlaneComponentHealthCheck" in str(e.value)
    assert "the kubeadm config mixes API versions" in str(e.value)  # the hint
    # Without the snippet the same config passes, checked by the local kubeadm as well.
    phase.setup(params_file=str(SITE), mode="plan")
    phase.config()
    msgs = [r.message for r in phase._ctx().phase.steps["config"]]
    assert any(m.startswith("kubeadm v1.34.4 config validate: ok") for m in msgs), msgs
