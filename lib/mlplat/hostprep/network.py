"""Static IP with a rollback: NetworkManager (``nmcli``, RHEL family and NM-managed Ubuntu) or netplan
(Ubuntu). No step may cut the SSH session it runs over, so a change is made by a detached guard:

1. the guard script (``/run/mlplat-net-guard.sh``) is written, with both the change and its revert;
2. it runs detached (``setsid``): applies the change, sleeps ``GUARD_SECONDS``, and reverts unless
   the confirmation file is gone by then;
3. mlplat reconnects over a fresh SSH session, checks that the static address is up, and confirms
   (removes ``/run/mlplat-net.pending``). No reconnect, no confirmation: the host reverts itself.

The address SSH uses now is kept on the interface as a second address when it differs from the
static one, so the session survives even before the rollback would be needed.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import time

from .base import Call, Outcome, RemoteError, Run, Target, WriteFile, converged, fail, have, skip

GUARD = "/run/mlplat-net-guard.sh"
PENDING = "/run/mlplat-net.pending"
RESULT = "/run/mlplat-net.result"
GUARD_SECONDS = 120
NETPLAN_FILE = "/etc/netplan/60-mlplat-static.yaml"


# -- parsers ------------------------------------------------------------------------------------

def parse_nmcli_dev_show(text: str) -> dict[str, dict]:
    """``nmcli dev show`` (multi-line) as {device: {field: value or [values]}}; indexed fields such as
    ``IP4.ADDRESS[1]`` are collected into lists under ``IP4.ADDRESS``."""
    out: dict[str, dict] = {}
    cur: dict | None = None
    for line in text.splitlines():
        m = re.match(r"^([A-Z0-9_.-]+)(\[\d+\])?:\s*(.*)$", line.strip())
        if not m:
            continue
        key, idx, val = m.group(1), m.group(2), m.group(3).strip()
        if key == "GENERAL.DEVICE":
            cur = out.setdefault(val, {})
        if cur is None:
            continue
        if idx:
            cur.setdefault(key, []).append(val)
        else:
            cur[key] = val
    return out


def parse_nmcli_con_show(text: str) -> list[dict]:
    """``nmcli conn show`` (the NAME UUID TYPE DEVICE table; names may hold spaces; warning lines
    skipped): [{name, uuid, type, device (None for '--')}]."""
    rows = []
    uuid_rx = re.compile(r"^(?P<name>.+?)\s+(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\s+"
                         r"(?P<type>\S+)\s+(?P<device>\S+)\s*$")
    for line in text.splitlines():
        m = uuid_rx.match(line)
        if m:
            d = m.groupdict()
            d["device"] = None if d["device"] == "--" else d["device"]
            rows.append(d)
    return rows


def parse_nmcli_values(text: str, fields: list[str]) -> dict[str, str]:
    """``nmcli -g f1,f2,... connection show NAME``: one value per line, in the fields' order."""
    lines = text.splitlines()
    return {f: (lines[i].strip() if i < len(lines) else "") for i, f in enumerate(fields)}


NM_FIELDS = ["ipv4.method", "ipv4.addresses", "ipv4.gateway", "ipv4.dns", "ipv4.dns-search"]


# -- rendering ----------------------------------------------------------------------------------

def wanted_addresses(t: Target, iface_addresses: list[str]) -> list[str]:
    """The static address first, then the address SSH uses now (when different and on this
    interface), so the session survives the change."""
    static = t.host.static_address
    out = [static]
    sip = ipaddress.ip_interface(static).ip
    for a in iface_addresses:
        try:
            ai = ipaddress.ip_interface(a)
        except ValueError:
            continue
        if ai.version == 4 and str(ai.ip) == t.host.address and ai.ip != sip:
            out.append(str(ai))
    return out


def netplan_yaml(iface: str, addresses: list[str], gateway: str | None, dns: list[str], search: list[str]) -> str:
    lines = ["# Written by mlplat (10_host_prep, static IP) from the params; netplan merges it over",
             "# the files before it (50-cloud-init.yaml...).", "network:", "  version: 2", "  ethernets:",
             f"    {iface}:", "      dhcp4: false", "      addresses:"]
    lines += [f"        - {a}" for a in addresses]
    if gateway:
        lines += ["      routes:", "        - to: default", f"          via: {gateway}"]
    if dns or search:
        lines.append("      nameservers:")
        if dns:
            lines.append(f"        addresses: [{', '.join(dns)}]")
        if search:
            lines.append(f"        search: [{', '.join(search)}]")
    return "\n".join(lines) + "\n"


def guard_script(apply_cmd: str, revert_cmd: str, seconds: int = GUARD_SECONDS) -> str:
    return f"""#!/bin/sh
# Written by mlplat (10_host_prep, static IP): applies the network change, then reverts it
# unless mlplat reconnects and confirms (removes {PENDING}) within {seconds} s.
exec >/run/mlplat-net.log 2>&1
echo "apply: $(date)"
{apply_cmd}
sleep {seconds}
if [ -e {PENDING} ]; then
  echo "not confirmed: reverting $(date)"
  {revert_cmd}
  echo reverted > {RESULT}
  rm -f {PENDING}
else
  echo confirmed > {RESULT}
fi
"""


def _q(v: str) -> str:
    return shlex.quote(v)


def _confirm(iface: str, static: str, seconds: int):
    ip = str(ipaddress.ip_interface(static).ip)

    def fn(t: Target) -> str:
        conn = getattr(t.remote, "conn", None)
        time.sleep(3)
        deadline = time.monotonic() + max(10, seconds - 20)
        last = ""
        while time.monotonic() < deadline:
            try:
                if conn is not None:
                    conn.close()  # a fresh session: proves the host is reachable after the change
                r = t.remote.run(f"ip -o -4 addr show dev {_q(iface)}")
                if ip in r.stdout:
                    t.remote.run(f"rm -f {PENDING}")
                    return f"reconnected, {static} up on {iface}, change confirmed (guard stood down)"
                last = f"{static} not on {iface} yet"
            except Exception as e:  # unreachable for now: keep trying until the deadline
                last = f"{type(e).__name__}: {e}"
            time.sleep(3)
        raise RemoteError(f"could not confirm the static address on {iface} ({last}); the guard restores the "
                          f"previous settings {seconds}s after the change")

    return Call(fn, f"reconnect, check {static} on {iface}, confirm within {seconds}s",
                shown=f"reconnect over a new SSH session; `ip -o -4 addr show dev {iface}` must show {ip}; "
                      f"then rm -f {PENDING} (else the guard reverts after {seconds}s)")


def _launch() -> Run:
    return Run(f"touch {PENDING} && rm -f {RESULT} && nohup setsid sh {GUARD} >/dev/null 2>&1 </dev/null &",
               "start the guard (applies the change; reverts it unless confirmed)")


# -- the step -------------------------------------------------------------------------------------

def plan(t: Target) -> Outcome:
    n = t.params.network
    if not n.manage_static_ip:
        return skip("network.manage_static_ip is false: addresses left as they are")
    if not t.host.static_address:
        return skip("no static_address for this host in the params")
    iface = t.host.interface or _iface_of(t)
    if not iface:
        return fail(f"cannot tell which interface carries {t.host.address}: set hosts[].interface")
    nm = have(t, "nmcli") and t.remote.run("nmcli -t -f RUNNING general 2>/dev/null").stdout.strip() == "running"
    if nm:
        return _plan_nm(t, iface)
    if have(t, "netplan"):
        return _plan_netplan(t, iface)
    return fail("neither NetworkManager (running) nor netplan found: this host's network tool is not automated; "
                f"set {t.host.static_address} on {iface} by hand (keep {t.host.address} until it answers)")


def _iface_of(t: Target) -> str | None:
    for nic in t.facts.get("nics", []):
        if any(a.split("/")[0] == t.host.address for a in nic.get("addresses", [])):
            return nic["name"]
    return None


def _plan_nm(t: Target, iface: str) -> Outcome:
    n = t.params.network
    dev = parse_nmcli_dev_show(t.remote.run(f"nmcli dev show {_q(iface)}").stdout).get(iface)
    if not dev:
        return fail(f"NetworkManager does not know the interface {iface}")
    con = dev.get("GENERAL.CONNECTION") or ""
    if not con or con == "--":
        return fail(f"{iface} has no active NetworkManager connection: activate one first (nmcli con up ...)")
    cur = parse_nmcli_values(t.remote.run(f"nmcli -g {','.join(NM_FIELDS)} connection show {_q(con)}").stdout, NM_FIELDS)
    addrs = dev.get("IP4.ADDRESS", [])
    addrs = addrs if isinstance(addrs, list) else [addrs]
    want_addrs = wanted_addresses(t, addrs)
    have_addrs = [a.strip() for a in cur["ipv4.addresses"].split(",") if a.strip()]
    dns_now = [d for d in re.split(r"[,\s]+", cur["ipv4.dns"]) if d]
    ok = (cur["ipv4.method"] == "manual" and t.host.static_address in have_addrs
          and (not n.gateway or cur["ipv4.gateway"] == n.gateway)
          and set(dns_now) == set(n.dns) and t.host.static_address in addrs)
    if ok:
        return converged(f"{con} ({iface}): manual {', '.join(have_addrs)} gw {cur['ipv4.gateway'] or '-'}")
    mod = (f"nmcli con modify {_q(con)} ipv4.method manual ipv4.addresses {_q(','.join(want_addrs))} "
           f"ipv4.gateway {_q(n.gateway or '')} ipv4.dns {_q(' '.join(n.dns))} "
           f"ipv4.dns-search {_q(','.join(n.search_domains))}")
    apply_cmd = f"{mod} && nmcli con up {_q(con)}"
    revert_cmd = (f"nmcli con modify {_q(con)} ipv4.method {_q(cur['ipv4.method'] or 'auto')} "
                  f"ipv4.addresses {_q(cur['ipv4.addresses'])} ipv4.gateway {_q(cur['ipv4.gateway'])} "
                  f"ipv4.dns {_q(cur['ipv4.dns'])} ipv4.dns-search {_q(cur['ipv4.dns-search'])} && "
                  f"nmcli con up {_q(con)}")
    script = guard_script(apply_cmd, revert_cmd)
    actions = [WriteFile(GUARD, script, t.remote.read(GUARD), 0o700), _launch(),
               _confirm(iface, t.host.static_address, GUARD_SECONDS)]
    return Outcome(actions=actions,
                   message=f"{con} ({iface}) now {cur['ipv4.method'] or '?'} {', '.join(addrs) or '-'}; "
                           f"wanted manual {', '.join(want_addrs)}",
                   data={"connection": con, "previous": cur})


def _plan_netplan(t: Target, iface: str) -> Outcome:
    n = t.params.network
    addrs = next((nic.get("addresses", []) for nic in t.facts.get("nics", []) if nic.get("name") == iface), [])
    content = netplan_yaml(iface, wanted_addresses(t, addrs), n.gateway, n.dns, n.search_domains)
    old = t.remote.read(NETPLAN_FILE)
    up = t.host.static_address.split("/")[0] in t.remote.run(f"ip -o -4 addr show dev {_q(iface)}").stdout
    if old == content and up:
        return converged(f"{NETPLAN_FILE} in place, {t.host.static_address} up on {iface}")
    if old is None:
        revert = f"rm -f {NETPLAN_FILE} && netplan apply"
    else:
        import base64

        b64 = base64.b64encode(old.encode()).decode()
        revert = f"printf %s {b64} | base64 -d > {NETPLAN_FILE} && netplan apply"
    script = guard_script("netplan generate && netplan apply", revert)
    actions = [WriteFile(NETPLAN_FILE, content, old, 0o600, backup=True),
               WriteFile(GUARD, script, t.remote.read(GUARD), 0o700), _launch(),
               _confirm(iface, t.host.static_address, GUARD_SECONDS)]
    return Outcome(actions=actions, message=f"netplan: {iface} -> {t.host.static_address}")
