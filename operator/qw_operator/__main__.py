"""`python -m qw_operator [--namespace NS ... | --all-namespaces] [--kubeconfig PATH] [--peering NAME]`."""

from __future__ import annotations

import argparse
import os
import sys
import time

import kopf
from qw_core.logs import configure_logging
from qw_core.settings import OperatorSettings, load

from qw_operator import main as handlers  # noqa: F401 - registers the kopf handlers


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qw_operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    p.add_argument(
        "--peering",
        default=None,
        help="kopf peering object name (a KopfPeering in each watched namespace, or a ClusterKopfPeering with"
        " --all-namespaces); operators sharing it run one at a time. Default $QW_PEERING; empty = standalone",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    cfg = load(OperatorSettings)
    configure_logging(cfg.log_format, cfg.log_level)
    namespaces = args.namespace or ([cfg.namespace] if cfg.namespace else [])
    if not namespaces and not args.all_namespaces:
        print("give --namespace NS (or QW_NAMESPACE) or --all-namespaces", file=sys.stderr)
        return 2
    peering = cfg.peering if args.peering is None else args.peering
    # The longest-running operator keeps the lead: an older start means a higher priority, so a newcomer
    # (a rollout's second pod, a restarted one) waits paused until the older one is gone.
    priority = 10**13 - int(time.time() * 1000)
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=namespaces,
        standalone=not peering,
        peering_name=peering or None,
        priority=priority,
        liveness_endpoint=f"http://{cfg.health_host}:{cfg.health_port}/healthz",
        memo=kopf.Memo(namespaces=namespaces, clusterwide=args.all_namespaces),  # what main.startup watches
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
