"""Loading and validating parameter files: every problem at once, each with its key path and a fix."""

from __future__ import annotations

import difflib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from . import schema
from .schema import OS_FAMILY, SUPPORTED_OS, Params, SecretRef
from .versions import check_stack


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a params file."""

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f"\n    fix: {self.fix}" if self.fix else "")


class ParamsError(Exception):
    """The params file is invalid; `problems` lists everything wrong with it."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a syntax error names file, line and column (1-based)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ParamsError(str(p), [Problem("(file)", f"cannot read: {e.strerror}", "check the path")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        msg = " ".join(x for x in (e.context, e.problem) if x)
        raise ParamsError(str(p), [Problem(where, f"YAML syntax error: {msg}",
                                           "fix the YAML at that line and column (indentation, a missing ':' or quote)")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(str(p), [Problem("(top level)", "the file must hold a mapping of keys",
                                           "start from params/example.yaml")])
    return data


def _loc_to_path(loc: tuple, data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(node, list) and part < len(node) and isinstance(node[part], dict) and "name" in node[part]:
                label = f"[{part}]({node[part]['name']})"
            out += label
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (for did-you-mean suggestions)."""
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in _unwrap(ann):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def _unwrap(ann):
    import typing

    args = typing.get_args(ann)
    if not args:
        return [ann]
    out = []
    for a in args:
        out.extend(_unwrap(a))
    return out


def _fix_for(err: dict) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        names = list(getattr(model, "model_fields", {})) if model else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        if close:
            return f"did you mean '{close[0]}'? otherwise remove the key"
        return "remove the key" + (f" (known keys here: {', '.join(names)})" if names else "")
    if kind == "missing":
        return "add this key (see params/example.yaml)"
    if kind.startswith("int") or kind.startswith("float"):
        return "write a number"
    if kind.startswith("bool"):
        return "write true or false"
    if kind in ("list_type", "too_short"):
        return "write a YAML list"
    if kind == "literal_error":
        return "use one of the allowed values above"
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] == "name":
            return "use lower-case letters, digits and '-' (a DNS label), at most 63 characters"
        return "use only letters, digits, '.', '_' and '-'"
    if kind in ("less_than_equal", "greater_than_equal", "greater_than", "less_than"):
        return "use a value within the range above"
    if "secret" in err.get("msg", ""):
        return "move the value into an environment variable or a file readable only by you, and reference it"
    return "see params/example.yaml for this key"


def _clean_msg(err: dict) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    inp = err.get("input")
    if err["type"] not in ("missing", "extra_forbidden") and isinstance(inp, (str, int, float, bool)) \
            and "secret" not in msg:
        msg += f" (got {inp!r})"
    return msg


def _cross_checks(data: dict) -> list[Problem]:
    """Checks that span fields. Tolerant of malformed input: the schema reports shapes."""
    out: list[Problem] = []
    hosts = data.get("hosts") if isinstance(data.get("hosts"), list) else []
    seen_names: dict[str, int] = {}
    seen_addr: dict[str, int] = {}
    any_cp = False
    for i, h in enumerate(hosts):
        if not isinstance(h, dict):
            continue
        name, addr = h.get("name"), h.get("address")
        label = f"hosts[{i}]" + (f"({name})" if name else "")
        if isinstance(name, str):
            if name in seen_names:
                out.append(Problem(f"{label}.name", f"duplicate host name {name!r} (also hosts[{seen_names[name]}])",
                                   "give every host a unique name"))
            seen_names.setdefault(name, i)
        if isinstance(addr, str):
            if addr in seen_addr:
                out.append(Problem(f"{label}.address", f"duplicate address {addr} (also hosts[{seen_addr[addr]}])",
                                   "every host needs its own address"))
            seen_addr.setdefault(addr, i)
        roles = h.get("roles")
        if isinstance(roles, list) and schema.ROLE_CONTROL_PLANE in roles:
            any_cp = True
    if hosts and not any_cp:
        out.append(Problem("hosts", "no host has the control-plane role",
                           "add 'control-plane' to the roles of one host (the first is usual)"))
    osd = data.get("os") if isinstance(data.get("os"), dict) else {}
    distro, ver, fam = osd.get("distro", "rocky"), str(osd.get("version", "9")), osd.get("family")
    if distro in SUPPORTED_OS and ver not in SUPPORTED_OS[distro]:
        out.append(Problem("os.version", f"{distro} {ver} is not supported",
                           f"use one of {', '.join(sorted(SUPPORTED_OS[distro]))}"))
    if fam and distro in OS_FAMILY and OS_FAMILY[distro] != fam:
        out.append(Problem("os.family", f"{distro} belongs to the {OS_FAMILY[distro]} family, not {fam}",
                           f"set os.family to {OS_FAMILY[distro]}"))
    k = data.get("kubernetes") if isinstance(data.get("kubernetes"), dict) else {}
    try:
        pod = ipaddress.ip_network(k.get("pod_cidr", "10.244.0.0/16"))
        svc = ipaddress.ip_network(k.get("service_cidr", "10.96.0.0/12"))
        if pod.overlaps(svc):
            out.append(Problem("kubernetes.pod_cidr", f"pod CIDR {pod} overlaps service CIDR {svc}",
                               "choose ranges that do not overlap (defaults: 10.244.0.0/16 and 10.96.0.0/12)"))
        for i, h in enumerate(hosts):
            try:
                a = ipaddress.ip_address(h.get("address"))
            except (ValueError, TypeError, AttributeError):
                continue
            if a in pod or a in svc:
                out.append(Problem(f"hosts[{i}].address", f"{a} lies inside the pod or service CIDR",
                                   "move kubernetes.pod_cidr/service_cidr away from the host network"))
    except (ValueError, TypeError):
        pass
    vers = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    merged = schema.Versions.model_construct().model_dump()
    merged.update({kk: vv for kk, vv in vers.items() if isinstance(vv, (str, int, float))})
    for inc in check_stack({kk: str(vv) for kk, vv in merged.items()}):
        out.append(Problem(inc.path, inc.message, inc.fix))
    disks = data.get("disks") if isinstance(data.get("disks"), list) else []
    for i, d in enumerate(disks):
        if isinstance(d, dict) and d.get("host") and d["host"] not in seen_names:
            out.append(Problem(f"disks[{i}].host", f"no host named {d['host']!r}", "use a name from hosts"))
    return out


def validate_data(data: dict, source: str = "<params>", check_files: bool = True) -> tuple[Params | None, list[Problem]]:
    """Validate a parsed mapping. Returns the model (None when invalid) and every problem found.

    `source` (the params file's path) anchors relative paths; `check_files=False` skips reading the
    files the params name (public keys), for checking a file away from the machine that uses it.
    """
    problems: list[Problem] = []
    model = None
    try:
        model = Params.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            problems.append(Problem(_loc_to_path(loc, data), _clean_msg(err), _fix_for(err)))
    problems.extend(_cross_checks(data))
    from .os_install_checks import params_problems

    base = Path(source).parent if source and not source.startswith("<") else None
    problems.extend(params_problems(data, base_dir=base, check_files=check_files))
    # The schema and the cross checks can both see one fault; say it once.
    uniq: dict[tuple[str, str], Problem] = {}
    for p in problems:
        uniq.setdefault((p.path, p.message), p)
    problems = list(uniq.values())
    return (model if not problems else None), problems


def load_params(path: str | Path, check_files: bool = True) -> Params:
    """Load and validate a params file; raise :class:`ParamsError` listing all problems."""
    data = read_yaml(path)
    model, problems = validate_data(data, str(path), check_files=check_files)
    if problems:
        raise ParamsError(str(path), problems)
    assert model is not None
    return model


def resolve_secret(ref: SecretRef) -> str:
    """Read a secret from its reference; the value is registered with the archive scrubber."""
    from ..report.scrub import register_secret

    if ref.env is not None:
        if ref.env not in os.environ:
            raise KeyError(f"secret reference: environment variable {ref.env} is not set")
        value = os.environ[ref.env]
    else:
        p = Path(os.path.expanduser(ref.file))
        value = p.read_text().rstrip("\n")
    register_secret(value)
    return value


def secret_values(params: Params) -> list[str]:
    """Resolve every secret reference that can be resolved now (for scrubbing); missing ones skipped."""
    refs = list(params.secrets.values())
    for ref in (params.ssh.sudo_password, params.os_install.root_password_hash):
        if ref is not None:
            refs.append(ref)
    out = []
    for r in refs:
        try:
            out.append(resolve_secret(r))
        except (KeyError, OSError):
            continue
    return out
