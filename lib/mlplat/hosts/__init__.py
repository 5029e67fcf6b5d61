"""SSH fan-out (Fabric) and host facts: uses params and report, knows nothing of Kubernetes."""

from .facts import FACTS_SCRIPT, facts_table, gather_facts, parse_facts
from .ssh import (
                  ChangedHostKey,
                  CommandFailed,
                  CommandResult,
                  CommandTimeout,
                  HostConnection,
                  HostError,
                  HostKeyError,
                  HostPool,
                  UnknownHostKey,
                  Unreachable,
                  fingerprint,
                  known_hosts_name,
)

__all__ = ["FACTS_SCRIPT", "ChangedHostKey", "CommandFailed", "CommandResult", "CommandTimeout",
           "HostConnection", "HostError", "HostKeyError", "HostPool", "UnknownHostKey", "Unreachable",
           "facts_table", "fingerprint", "gather_facts", "known_hosts_name", "parse_facts"]
