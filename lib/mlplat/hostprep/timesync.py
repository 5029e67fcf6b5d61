"""Time sync with chrony (certificates, etcd and logs need agreeing clocks): installed, pointed at
``network.ntp_servers`` when given (else the distribution's pool), enabled and running."""

from __future__ import annotations

from .base import Outcome, Target, converged, file_action, skip, systemd_enable
from .packages import ensure_packages

HEADER = "# Written by mlplat (10_host_prep, time sync) from params network.ntp_servers.\n"
DEBIAN_SOURCES = "/etc/chrony/sources.d/mlplat.sources"
RHEL_CONF = "/etc/chrony.conf"


def rhel_chrony_conf(servers: list[str]) -> str:
    return (HEADER + "".join(f"server {s} iburst\n" for s in servers) +
            "driftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\nkeyfile /etc/chrony.keys\n"
            "leapsectz right/UTC\nlogdir /var/log/chrony\n")


def debian_sources(servers: list[str]) -> str:
    return HEADER + "".join(f"server {s} iburst\n" for s in servers)


def plan(t: Target) -> Outcome:
    if not t.has_systemd:
        # Without an init system chronyd would have to be started by hand, and in a container it
        # would set the machine's clock; the host's clock comes from whatever runs it.
        return skip(t.no_systemd_reason())
    actions, _ = ensure_packages(t, ["chrony"])
    servers = t.params.network.ntp_servers
    config_changed = False
    if servers:
        if t.debian:
            files = file_action(t, DEBIAN_SOURCES, debian_sources(servers))
        else:
            files = file_action(t, RHEL_CONF, rhel_chrony_conf(servers), backup=True)
        config_changed = bool(files)
        actions += files
    unit = "chrony" if t.debian else "chronyd"
    if actions and any(a.__class__.__name__ == "Run" for a in actions):
        # Not installed yet: enabling comes with the package; restart picks the config.
        actions.append(_enable_after_install(unit))
    else:
        actions += systemd_enable(t, unit, restart=config_changed)
    where = ", ".join(servers) if servers else "the distribution's pool"
    if not actions:
        return converged(f"{unit} running, servers: {where}")
    return Outcome(actions=actions, message=f"servers: {where}")


def _enable_after_install(unit: str):
    from .base import Run

    return Run(f"systemctl enable {unit} && systemctl restart {unit}", f"enable and (re)start {unit}")
