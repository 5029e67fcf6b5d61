"""The `mlplat` command: validate params, run phases, list runs, open the notebooks in JupyterLab,
manage the local lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INVALID = 2


def _cmd_validate(args) -> int:
    from .params import ParamsError, read_yaml, validate_data

    try:
        data = read_yaml(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    _, problems = validate_data(data, args.params)
    if problems:
        print(f"{args.params}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.params}: ok ({len(data.get('hosts', []))} host(s))")
    return 0


def _cmd_run(args) -> int:
    from .params import ParamsError
    from .runner import RunError, resume, run

    try:
        if args.resume:
            rec = resume(args.resume, progress=not args.quiet)
        else:
            if not args.params:
                from .phases.common import default_lab_params

                lab = default_lab_params()
                if not lab.exists():
                    print("mlplat run: give --params FILE (or run `mlplat lab up` first)", file=sys.stderr)
                    return EXIT_INVALID
                args.params = str(lab)
            rec = run(args.params, args.mode, only=args.only, start=args.start, phases=args.phases,
                      progress=not args.quiet)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except RunError as e:
        print(f"mlplat run: {e}", file=sys.stderr)
        return EXIT_INVALID
    return 0 if rec["status"] == "ok" else 1


def _cmd_runs(args) -> int:
    from .runner import history_table, write_index

    if args.html:
        path = write_index()
        print(f"run history: {path.resolve().as_uri()}")
        return 0
    df = history_table()
    print("(no runs yet)" if df.empty else df.to_string(index=False))
    return 0


def _cmd_notebook(args) -> int:
    from .notebook import NotebookError, serve

    try:
        serve(args.params, args.port, args.notebook_dir)  # execs JupyterLab: returns only on error
    except NotebookError as e:
        print(f"mlplat notebook: {e}", file=sys.stderr)
        return EXIT_INVALID
    return 1


REAL_LAB_DIR = ".lab-real"


def _lab_dir(args) -> Path:
    """--state-dir, else the KWOK lab's folder (.lab or $MLPLAT_LAB_DIR), or .lab-real beside it
    for --nodes real: the two labs can run side by side."""
    from .phases.common import default_lab_params

    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    default = default_lab_params().parent
    return default.with_name(REAL_LAB_DIR) if getattr(args, "nodes", None) == "real" else default


def _cmd_lab(args) -> int:
    from . import lab
    from .lab.build import LabBuildError

    state = _lab_dir(args)
    try:
        if args.lab_cmd == "up":
            path = lab.up(state, hosts=args.hosts, cluster=not args.no_cluster, nodes=args.nodes)
            print(f"lab up: params file {path}")
            print(f"next: mlplat run --params {path}")
        elif args.lab_cmd == "down":
            lab.down(state)
            print("lab down: nothing running, nothing mounted")
        elif args.lab_cmd == "status":
            df = lab.status_table(state)
            print(df.to_string(index=False))
            return 0 if bool(df["ok"].all()) else 1
        elif args.lab_cmd == "build":
            lab.build_binaries(force=args.force, nodes=args.nodes)
    except (lab.LabError, LabBuildError) as e:
        print(f"mlplat lab {args.lab_cmd}: {e}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mlplat", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("validate", help="check a params file; lists every problem; exit 2 when invalid")
    v.add_argument("params")
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("run", help="run the phase notebooks with papermill and archive the run")
    r.add_argument("--params", help="params YAML (default: the lab's, after `mlplat lab up`)")
    r.add_argument("--mode", choices=["plan", "apply"], default="plan")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--only", help="run one phase (number or name)")
    g.add_argument("--from", dest="start", help="run from this phase on")
    g.add_argument("--phases", help="comma-separated phases, e.g. 00,10")
    g.add_argument("--resume", metavar="RUN_ID", help="continue a failed run from its failed phase")
    r.add_argument("--quiet", action="store_true", help="no cell progress bar")
    r.set_defaults(func=_cmd_run)

    h = sub.add_parser("runs", help="list archived runs, newest first")
    h.add_argument("--html", action="store_true",
                   help="(re)write outputs/index.html, the run history page, and print its file:// URL")
    h.set_defaults(func=_cmd_runs)

    n = sub.add_parser("notebook", help="JupyterLab on 127.0.0.1 with a token, in notebooks/, with the mlplat "
                                        "kernel and the params file selected; prints the URL")
    n.add_argument("--params", help="params YAML the notebooks use (default: $MLPLAT_PARAMS, else the lab's)")
    n.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (default: 8888)")
    n.add_argument("--notebook-dir", help="folder JupyterLab opens (default: the repository's notebooks/)")
    n.set_defaults(func=_cmd_notebook)

    lab_p = sub.add_parser("lab", help="the local lab: SSH hosts on loopback and a control plane with KWOK nodes")
    lab_sub = lab_p.add_subparsers(dest="lab_cmd", required=True)
    up = lab_sub.add_parser("up", help="start the lab (twice is harmless) and write its params file")
    up.add_argument("--hosts", type=int, default=None,
                    help="number of lab hosts (default: keep the lab's size; 2 for a new lab)")
    up.add_argument("--no-cluster", action="store_true", help="SSH hosts only, no Kubernetes control plane")
    for p in (up, lab_sub.add_parser("down", help="stop everything; leaves nothing running or mounted"),
              lab_sub.add_parser("status", help="health of every lab component")):
        p.add_argument("--state-dir", help="lab state directory (default: .lab in the repository, or $MLPLAT_LAB_DIR; "
                                           f"{REAL_LAB_DIR} beside it with --nodes real)")
        p.add_argument("--nodes", choices=["kwok", "real"], default=None,
                       help="kwok (default): SSH hosts plus a control plane with KWOK nodes; real: hosts that "
                            "become real kubelet + containerd nodes (own network namespaces on a lab bridge), with "
                            "the lab-built binaries and image kit: 30_kubernetes builds the cluster with kubeadm")
    b = lab_sub.add_parser("build", help="build (or verify the cache of) the lab's Go binaries")
    b.add_argument("--force", action="store_true")
    # The keys of mlplat.lab.build.NODE_SETS (not imported here: the lab package loads pandas).
    b.add_argument("--nodes", choices=["kwok", "real", "all"], default="kwok",
                   help="kwok: the default lab's binaries; real: for kubeadm nodes (adds kubelet, kube-proxy, "
                        "CoreDNS); all")
    lab_p.set_defaults(func=_cmd_lab)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
