"""Install-media pitfalls: what an installer's failure text means, and the fix for each cause.

:func:`diagnose_install_log` reads what the operator saw on the console (or `rdsosreport.txt`,
`journalctl`, the installer's log), optionally the kernel command line and the params, and
returns the likely causes, those the text proves first:

- Anaconda / dracut: "Warning: /dev/root does not exist" after "Could not boot" and the
  emergency shell. The installer never found its stage2 image: the `inst.stage2=hd:LABEL=` label
  does not match the USB stick's volume label, the label's spaces were not escaped as `\\x20`,
  the image was written with a tool that relabelled the stick, or `inst.ks` points at an address
  the installer cannot reach.
- Ubuntu: the installer starts interactively instead of installing: the `autoinstall` argument
  is missing, or the `ds=nocloud;s=URL` data source is unreachable or cut at the `;` by GRUB.

Phase 05 shows these next to the boot arguments it writes; 90_troubleshoot can call it with a
pasted log. Bottom layer: takes the params duck-typed (the model or a plain mapping).
"""

from __future__ import annotations

import re
from typing import Any

from ..params.os_install_checks import escape_label, unescape_label

_DRACUT_ROOT = re.compile(r"/dev/root does not exist", re.I)
_COULD_NOT_BOOT = re.compile(r"Could not boot|dracut-initqueue[^\n]*timeout|Dracut Emergency Shell|dracut:/#", re.I)
_INST_ARG = re.compile(r"\binst\.(stage2|repo|ks)=", re.I)
_LABEL_ARG = re.compile(r"\b(?:inst\.stage2|inst\.repo|stage2|repo)=hd:LABEL=(\S+)|\broot=live:(?:CD)?LABEL=(\S+)", re.I)
_KS_ARG = re.compile(r"\b(?:inst\.)?ks=(\S+)", re.I)
_KS_FAIL = re.compile(
    r"(kickstart[^\n]*(fail|could not|couldn't|unable|not found|error)|fetch-kickstart|"
    r"curl: \(\d+\)|Couldn't resolve host|Could not resolve host|Network is unreachable|No route to host|"
    r"Connection timed out|Connection refused)", re.I)
_LINK = re.compile(r"(?:^|\s)(?:/dev/disk/by-label/)?([^\s/]+)\s+->\s+\.\./\.\./\w+", re.M)
_MISSING_LABEL = re.compile(r"/dev/disk/by-label/(\S+?)\.?\s+(?:does not exist|not found)", re.I)
_UUIDISH = re.compile(r"^[0-9a-fA-F]{4,}(-[0-9a-fA-F]{2,})+$")
_BLKID_LABEL = re.compile(r'\bLABEL="([^"]*)"')
_UBUNTU = re.compile(r"subiquity|casper|autoinstall|cloud-init|nocloud|ubuntu", re.I)
_CONTINUE_PROMPT = re.compile(r"Continue with autoinstall\?", re.I)
_DS_ARG = re.compile(r"\bds=(nocloud(?:-net)?)(?:\\?;\s*s=(\S+))?", re.I)
_DS_FAIL = re.compile(
    r"(url_helper|Failed to fetch|Giving up on md from|Connection refused|Max retries exceeded|"
    r"timed out|Name or service not known|404 Not Found|HTTP Error 404|No valid user-data)", re.I)
_BOOT_FLAGS = {"quiet", "rhgb", "text", "inst.text", "rd.live.check", "nomodeset", "---", "splash",
               "inst.gpt", "noapic", "acpi=off", "xdriver=vesa", "rescue", "inst.rescue"}

FIX_LABEL = ("make the label on the boot line equal the medium's volume label: either set "
             "os_install.iso_volume_label to the ISO's label and rewrite the stick with dd / Fedora Media Writer "
             "(which keep it), or relabel the stick to the label the boot line names; in the dracut shell, "
             "`ls -l /dev/disk/by-label/` shows the labels present and `blkid` which device holds which; "
             "boot again and press e (GRUB) or Tab (isolinux) to edit inst.stage2=hd:LABEL=..., or use "
             "inst.stage2=hd:/dev/sdX1 as a one-off")
FIX_SPACES = ("write every space of the label as \\x20 on the boot line (e.g. hd:LABEL=CentOS\\x207\\x20x86_64); "
              "copy the line from the boot-args.txt phase 05 wrote, which escapes it")
FIX_TOOL = ("write the image in raw/DD mode (dd if=X.iso of=/dev/sdX bs=4M conv=fsync, Fedora Media Writer, "
            "Rufus in 'DD Image' mode) so the stick keeps the ISO's label; ISO-mode tools (Rufus ISO mode, "
            "UltraISO, UNetbootin, multiboot tools) reformat it as FAT32, whose labels are upper case and at most "
            "11 characters; otherwise put the label they wrote into the boot line")
FIX_KS = ("make the Kickstart reachable from the installer: check the URL in a browser from the same network, "
          "give the installer an address (ip=ADDR::GW:MASK:HOST:IFACE:none nameserver=DNS on the boot line, "
          "as boot-args.txt shows, or DHCP), name the NIC it should use (ip=IFACE:dhcp or "
          "inst.ks.device=IFACE) and open the web server's firewall; or put ks.cfg on a second stick labelled OEMDRV")
FIX_AUTOINSTALL = ("add the word autoinstall to the kernel command line (it makes subiquity install without asking); "
                   "in GRUB press e on the 'Try or Install Ubuntu' entry and add it before ---, as boot-args.txt shows")
FIX_DS = ("make the NoCloud source reachable: the s= URL must end with '/' and serve user-data and meta-data "
          "(curl URL/user-data from the same network); the installer needs an address first (DHCP or ip=...); "
          "or put user-data and meta-data on a second stick labelled CIDATA and drop ds=")
FIX_SEMICOLON = ("GRUB ends a command at ';': quote the argument ('ds=nocloud;s=http://host/dir/') or escape it "
                 "(ds=nocloud\\;s=...), as boot-args.txt writes it")


def _params_label(params: Any) -> str | None:
    if params is None:
        return None
    oi = params.get("os_install") if isinstance(params, dict) else getattr(params, "os_install", None)
    if oi is None:
        return None
    lab = oi.get("iso_volume_label") if isinstance(oi, dict) else getattr(oi, "iso_volume_label", None)
    return lab or None


def _loose(label: str) -> str:
    return re.sub(r"[\s_\-.]+", "", label).upper()


def _fat_form(label: str) -> str:
    """The label a FAT32 formatter makes of an ISO label: upper case, at most 11 characters."""
    return label.upper()[:11].strip()


def _labels_present(text: str) -> list[str]:
    """Volume labels the log shows present: `ls -l /dev/disk/by-label` links, `blkid` LABEL=."""
    found = []
    if "by-label" in text:
        found = [unescape_label(m.group(1)) for m in _LINK.finditer(text) if not _UUIDISH.match(m.group(1))]
    found += [m.group(1) for m in _BLKID_LABEL.finditer(text)]
    seen: dict[str, None] = {}
    for f in found:
        seen.setdefault(f, None)
    return list(seen)


def _item(id_: str, cause: str, fix: str, evidence: str = "") -> dict:
    return {"id": id_, "cause": cause, "fix": fix, "evidence": evidence}


def diagnose_install_log(text: str, params: Any = None, cmdline: str | None = None) -> list[dict]:
    """Likely causes of an install that did not start, each a dict with `cause` and `fix` (plus
    `id` and `evidence`: what in the text or params shows it, '' when it is only a known cause of
    this failure). Causes with evidence come first; [] when the text shows no known failure.

    `cmdline` is the kernel command line used (from the boot menu or `cat /proc/cmdline` in the
    dracut shell); without it, one found in `text` is used. With `params`, the label on the boot
    line is compared with `params.os_install.iso_volume_label`.
    """
    text = text or ""
    cmd = cmdline if cmdline is not None else "\n".join(
        ln for ln in text.splitlines() if _INST_ARG.search(ln) or "BOOT_IMAGE" in ln or _DS_ARG.search(ln))
    both = text + "\n" + cmd
    out: list[dict] = []

    anaconda = bool(_DRACUT_ROOT.search(text)) or (bool(_COULD_NOT_BOOT.search(text)) and bool(_INST_ARG.search(both)))
    if anaconda:
        want = _params_label(params)
        m = _LABEL_ARG.search(cmd)
        raw = (m.group(1) or m.group(2)) if m else None
        if raw is None and _MISSING_LABEL.search(text):  # rdsosreport / journal naming the by-label path
            raw = _MISSING_LABEL.search(text).group(1)
        cmd_label = unescape_label(raw.strip("'\"")) if raw else None
        present = _labels_present(text)
        # The log proves the label right when a device carries exactly the label the boot line asks for.
        label_ok = cmd_label is not None and cmd_label in present and (want is None or want == cmd_label)

        ev = []
        if cmd_label is not None and want is not None and cmd_label != want:
            ev.append(f"the boot line asks for LABEL={cmd_label!r}, params name the ISO label {want!r}")
        if cmd_label is not None and present and cmd_label not in present:
            ev.append(f"no device carries LABEL={cmd_label!r}; labels present: {', '.join(map(repr, present))}")
        if want is not None and present and cmd_label is None and want not in present:
            ev.append(f"no device carries the params label {want!r}; labels present: {', '.join(map(repr, present))}")
        if not label_ok:
            out.append(_item("label-mismatch",
                             "the installer's stage2 image was not found: the inst.stage2=hd:LABEL= label does not "
                             "match the volume label of the USB stick (dracut then gives up: 'Could not boot', "
                             "'/dev/root does not exist')", FIX_LABEL, "; ".join(ev)))

        # Spaces: an unescaped space ends the argument, so the label is cut at the first space.
        ev = []
        ref = want or next((p for p in present if " " in p), None)
        if m and raw is not None:
            after = cmd[m.end():].split()
            if ref and " " in ref and cmd_label is not None and ref.startswith(cmd_label + " "):
                ev.append(f"the boot line has LABEL={cmd_label!r}, the label is {ref!r}: the space ended the argument")
            elif after and "=" not in after[0] and after[0] not in _BOOT_FLAGS and not after[0].startswith(("rd.", "inst.")):
                ev.append(f"LABEL={raw} is followed by {after[0]!r}, which looks like the rest of a label with a space")
        label_with_space = (want and " " in want) or (cmd_label and " " in cmd_label)
        if not label_ok and (ev or label_with_space or not cmd_label):
            hint = f" (here: hd:LABEL={escape_label(want)})" if want and " " in want else ""
            out.append(_item("label-spaces", "the label has spaces that are not escaped as \\x20 on the boot line" + hint,
                             FIX_SPACES, "; ".join(ev)))

        # A tool that relabelled the stick: a present label that is the ISO label, mangled.
        ev = []
        for ref in filter(None, {want, cmd_label}):
            for p in present:
                if p != ref and (p == _fat_form(ref) or _loose(p) == _loose(ref) or _loose(p) == _loose(_fat_form(ref))):
                    ev.append(f"the stick is labelled {p!r}, not {ref!r}: the writing tool changed the label")
        if not label_ok:
            out.append(_item("label-changed-by-tool",
                             "the image was written with a tool that changed the volume label (ISO mode / FAT32 reformat)",
                             FIX_TOOL, "; ".join(dict.fromkeys(ev))))

        ks = _KS_ARG.search(cmd)
        ks_url = ks.group(1) if ks else ""
        net_ks = ks_url.startswith(("http:", "https:", "ftp:", "nfs:"))
        fails = [mm.group(0) for mm in _KS_FAIL.finditer(text)]
        if net_ks or fails or label_ok:
            ev = []
            if fails:
                ev.append(f"the log says {fails[0]!r}")
            if label_ok:
                ev.append(f"a device carries LABEL={cmd_label!r} as the boot line asks, so the medium is not the problem")
            if ev and net_ks:
                ev.insert(0, f"inst.ks={ks_url}" + ("" if re.search(r"\bip=\S+", cmd) else " with no ip= (DHCP)"))
            out.append(_item("ks-unreachable",
                             "inst.ks points at an address the installer cannot reach (no network yet, wrong NIC, "
                             "firewall, or a typo), so the install never gets its instructions",
                             FIX_KS, "; ".join(ev)))

    ubuntu = bool(_UBUNTU.search(both)) and not anaconda
    if ubuntu:
        tokens = cmd.split()
        has_auto = "autoinstall" in tokens
        ds = _DS_ARG.search(cmd)
        prompt = _CONTINUE_PROMPT.search(text)
        if prompt or (cmd.strip() and not has_auto) or not cmd.strip():
            ev = []
            if prompt:
                ev.append("the installer asked 'Continue with autoinstall?': it found the config, but the "
                          "command line lacks 'autoinstall'")
            if cmd.strip() and not has_auto:
                ev.append("no 'autoinstall' on the kernel command line")
            out.append(_item("autoinstall-missing", "the kernel command line lacks the autoinstall argument, so "
                             "subiquity waits for a person (or asks for confirmation)", FIX_AUTOINSTALL, "; ".join(ev)))
        if ds and not ds.group(2):
            out.append(_item("ds-semicolon", "ds=nocloud has no ;s=URL part: GRUB ended the command at the unquoted ';'",
                             FIX_SEMICOLON, f"the command line has {ds.group(0)!r} without s="))
        fails = [mm.group(0) for mm in _DS_FAIL.finditer(text)]
        if (ds and ds.group(2)) or fails or not cmd.strip():
            ev = []
            if ds and ds.group(2) and not ds.group(2).endswith("/") and ds.group(2).startswith("http"):
                ev.append(f"s={ds.group(2)} does not end with '/': cloud-init appends user-data to it")
            if fails:
                ev.append(f"the log says {fails[0]!r}")
            out.append(_item("ds-unreachable", "the ds=nocloud data source (user-data, meta-data) was not reachable, "
                             "so no autoinstall config was found", FIX_DS, "; ".join(ev)))

    out.sort(key=lambda d: 0 if d["evidence"] else 1)  # stable: evidence first, known order otherwise
    return out


def known_pitfalls(label: str | None = None) -> list[dict]:
    """Every cause this module knows, with its fix, for a table shown before anything failed;
    `label` (the params' ISO label) is shown escaped where it matters."""
    spaces = "the label has spaces that are not escaped as \\x20 on the boot line"
    if label and " " in label:
        spaces += f" (here: hd:LABEL={escape_label(label)})"
    return [
        _item("label-mismatch", "dracut emergency shell ('Could not boot', '/dev/root does not exist'): the "
              "inst.stage2=hd:LABEL= label does not match the USB stick's volume label"
              + (f" (the params say {label!r})" if label else ""), FIX_LABEL),
        _item("label-spaces", spaces, FIX_SPACES),
        _item("label-changed-by-tool", "the stick was written with a tool that changed its volume label "
              "(ISO mode / FAT32 reformat: upper case, at most 11 characters)", FIX_TOOL),
        _item("ks-unreachable", "inst.ks points at an address the installer cannot reach", FIX_KS),
        _item("autoinstall-missing", "Ubuntu: the kernel command line lacks the autoinstall argument, so the "
              "installer waits for a person", FIX_AUTOINSTALL),
        _item("ds-unreachable", "Ubuntu: the ds=nocloud;s=URL/ source (user-data, meta-data) is not reachable", FIX_DS),
        _item("ds-semicolon", "Ubuntu: GRUB cut ds=nocloud;s=... at an unquoted ';'", FIX_SEMICOLON),
    ]
