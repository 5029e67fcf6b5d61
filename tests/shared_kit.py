"""Where the tests find the shared offline kit, and why a test skips without it.

The kit (``fixtures/offline-bundle``, ``fixtures/os-install``, ``fixtures/recorded``) sits beside
the checkout as ``../shared``; ``$MLPLAT_SHARED`` names another folder, looked at first. The same
places as the library's own lookups (:func:`mlplat.kubeflow.source.default_bundle`,
:mod:`mlplat.cluster.bundle`, :func:`mlplat.phases.os_install.schema_path`).

A module of its own (not conftest): several test folders have a conftest.py, so
``from conftest import ...`` would be ambiguous.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "MLPLAT_SHARED"

BUNDLE = "fixtures/offline-bundle"


def candidates() -> list[Path]:
    """The shared folders looked at, in order: $MLPLAT_SHARED (when set), ../shared."""
    out = [Path(os.environ[ENV]).expanduser()] if os.environ.get(ENV) else []
    return out + [ROOT.parent / "shared"]


def find(rel: str) -> Path | None:
    """``<shared>/<rel>`` in the first shared folder that has it, else None."""
    return next((c / rel for c in candidates() if (c / rel).exists()), None)


def missing_reason(rel: str, what: str) -> str:
    """The skip reason: what is missing and every path it was looked for at."""
    looked = " and ".join(str(c / rel) for c in candidates())
    return (f"missing {what}: looked for {looked} (the shared offline kit belongs beside the "
            f"checkout as ../shared, or set ${ENV} to its folder)")


def require(rel: str, what: str) -> Path:
    """``<shared>/<rel>``, or skip the test saying what is missing and where it was looked for."""
    p = find(rel)
    if p is None:
        pytest.skip(missing_reason(rel, what))
    return p


def skip_without(rel: str, what: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark for tests that need ``<shared>/<rel>``: decided when the test starts,
    before any of its fixtures (a lab, a cluster) is set up, with :func:`missing_reason`."""
    return pytest.mark.skipif(find(rel) is None, reason=missing_reason(rel, what))


#: For lab tests whose phases read the offline bundle (flannel, device plugin, Istio, Kubeflow).
needs_offline_bundle = skip_without(BUNDLE, "the offline bundle")
