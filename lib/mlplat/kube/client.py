"""A small, explicit Kubernetes client over the official `kubernetes` package's transport.

:func:`client_from` loads a kubeconfig (and context) with the official loader, so client
certificates, bearer tokens and exec plugins work as they do for kubectl. :class:`Kube` then talks
plain REST paths with JSON bodies: every request carries a timeout (the params'
``kubernetes.request_timeout`` unless a call says otherwise), and every failure becomes a
:class:`KubeError` that says whether it is temporary (retry with backoff) or permanent (stop).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from .discovery import Discovery, Resource

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# HTTP statuses worth retrying: conflicts, throttling, and the API server (or a webhook behind it)
# not being ready. Everything else (400 invalid, 401/403 refused, 404, 422) stops at once.
TEMPORARY_STATUSES = {409, 425, 429, 500, 502, 503, 504}


class KubeError(ApiException):
    """A failed API call. ``temporary`` says whether retrying can help."""

    def __init__(self, status: int, reason: str, message: str, *, body: dict | None = None,
                 method: str = "", path: str = "", temporary: bool | None = None):
        super().__init__(status=status, reason=reason)
        self.message = message
        self.status_body = body or {}
        self.method = method
        self.path = path
        self._temporary = temporary
        self.body = json.dumps(body) if body else None

    @property
    def details(self) -> dict:
        return self.status_body.get("details") or {}

    @property
    def status_reason(self) -> str:
        """The Status object's machine-readable reason (NotFound, AlreadyExists, Invalid...)."""
        return self.status_body.get("reason") or self.reason or ""

    @property
    def temporary(self) -> bool:
        if self._temporary is not None:
            return self._temporary
        if self.status == 403 and "being terminated" in self.message:
            return False
        # The server answers 500 when a server-side apply body does not fit the schema (a field of
        # the wrong type): the same body fails the same way every time.
        if self.status == 500 and "failed to create typed patch object" in self.message:
            return False
        return self.status in TEMPORARY_STATUSES

    @property
    def object_missing(self) -> bool:
        """404 about the named object (not about the resource type or a missing namespace)."""
        return self.status == 404 and bool(self.details.get("name")) and not self.namespace_missing

    @property
    def namespace_missing(self) -> bool:
        return self.status == 404 and self.details.get("kind") == "namespaces"

    @property
    def resource_missing(self) -> bool:
        """404 because the server does not serve the path (a CRD not yet, or no longer, served)."""
        return self.status == 404 and not self.details.get("name")

    @property
    def kind_label(self) -> str:
        return "temporary" if self.temporary else "permanent"

    def __str__(self) -> str:
        code = f"HTTP {self.status}" if self.status else "no response"
        return f"{code} {self.status_reason}: {self.message}".strip()


def _connection_error(exc: Exception, method: str, path: str, host: str) -> KubeError:
    """Map a transport exception to a temporary KubeError with a short, readable reason."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, ApiException) and exc.status == 0:
        # The REST layer wraps SSL failures as status 0. A certificate that does not verify will not
        # verify on the next try; a handshake cut short by a restarting server will.
        verify = "certificate_verify_failed" in low or "certificate verify failed" in low
        return KubeError(0, "SSLError", f"TLS error talking to {host}: {exc.reason}", method=method,
                         path=path, temporary=not verify)
    if "refused" in low:
        why = "connection refused (API server down or restarting)"
    elif "reset" in low or "remotedisconnected" in low or "remote end closed" in low or "protocol" in low:
        why = "connection reset (API server restarting?)"
    elif "timed out" in low or "timeout" in low:
        why = "request timed out"
    elif "name or service not known" in low or "nodename nor servname" in low:
        why = "API server host name does not resolve"
        return KubeError(0, "ConnectionError", f"{why}: {host}", method=method, path=path, temporary=False)
    else:
        why = type(exc).__name__
    return KubeError(0, "ConnectionError", f"{why}: {host}", method=method, path=path, temporary=True)


class Kube:
    """One cluster connection: REST calls with timeouts, discovery, and typed errors.

    ``name`` is the kubeconfig context (used as the "host" column of step results),
    ``namespace`` the context's default namespace, ``field_manager`` the server-side-apply owner.
    """

    def __init__(self, api: k8s_client.ApiClient, *, name: str = "cluster", namespace: str = "default",
                 request_timeout: float = 30.0, field_manager: str = "mlplat", kubeconfig: str | None = None):
        self.api = api
        self.name = name
        self.namespace = namespace or "default"
        self.request_timeout = float(request_timeout)
        self.field_manager = field_manager
        self.kubeconfig = kubeconfig
        self.discovery = Discovery(self)

    # -- transport ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.api.configuration.host

    def request(self, method: str, path: str, *, query: dict | list | None = None, body: Any = None,
                content_type: str | None = None, timeout: float | tuple | None = None,
                stream: bool = False, accept: str = "application/json") -> Any:
        """One API call. Returns the decoded JSON (or text), or the raw urllib3 response when
        ``stream``. Raises :class:`KubeError` on any failure, transport errors included."""
        method = method.upper()
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        if content_type == APPLY_PATCH and body is not None and not isinstance(body, (str, bytes)):
            # The server reads apply patches as YAML, and YAML rejects the \uD83D-style surrogate
            # escapes json.dumps writes for characters outside the BMP (emoji in Grafana
            # dashboards); UTF-8 JSON is valid YAML.
            body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        params = [(k, v) for k, v in (query.items() if isinstance(query, dict) else (query or [])) if v is not None]
        params = [(k, "true" if v is True else "false" if v is False else v) for k, v in params]
        req = self.api.param_serialize(method, path, query_params=params, header_params=headers,
                                       body=body, auth_settings=["BearerToken"])
        t = self.request_timeout if timeout is None else timeout
        try:
            resp = self.api.call_api(*req, _request_timeout=t)
        except (urllib3.exceptions.HTTPError, OSError, ssl.SSLError) as e:
            raise _connection_error(e, method, path, self.host) from None
        except ApiException as e:
            raise _connection_error(e, method, path, self.host) from None
        raw = resp.response
        if not 200 <= resp.status <= 299:
            try:
                data = raw.data
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise _connection_error(e, method, path, self.host) from None
            raise _status_error(resp.status, resp.reason, data, method, path)
        if stream:
            return raw
        try:
            data = raw.data
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _connection_error(e, method, path, self.host) from None
        if not data:
            return None
        ctype = raw.headers.get("Content-Type", "")
        if "json" in ctype:
            return json.loads(data)
        return data.decode("utf-8", errors="replace")

    # -- convenience -------------------------------------------------------------------------
    def get(self, path: str, **query) -> dict:
        return self.request("GET", path, query=query or None)

    def get_or_none(self, path: str, **query) -> dict | None:
        """GET an object; None when the object does not exist."""
        try:
            return self.request("GET", path, query=query or None)
        except KubeError as e:
            if e.object_missing or (e.status == 404 and e.namespace_missing):
                return None
            raise

    def resource(self, kind: str, api_version: str | None = None) -> Resource:
        """The served resource for a kind (``Deployment``, ``deployments``, ``PyTorchJob``...)."""
        return self.discovery.find(kind, api_version)

    def list(self, res: Resource, namespace: str | None = None, *, selector: str | None = None,
             field_selector: str | None = None, limit: int = 500) -> list[dict]:
        """All objects of a resource (every namespace when ``namespace`` is None), paged."""
        return self.list_with_version(res, namespace, selector=selector, field_selector=field_selector,
                                      limit=limit)[0]

    def list_with_version(self, res: Resource, namespace: str | None = None, *, selector: str | None = None,
                          field_selector: str | None = None, limit: int = 500) -> tuple[list[dict], str]:
        items: list[dict] = []
        cont = None
        rv = ""
        while True:
            out = self.request("GET", res.path(namespace), query={
                "labelSelector": selector, "fieldSelector": field_selector, "limit": limit, "continue": cont})
            items.extend(out.get("items") or [])
            rv = (out.get("metadata") or {}).get("resourceVersion", rv)
            cont = (out.get("metadata") or {}).get("continue")
            if not cont:
                break
        kind = res.kind
        for it in items:  # list items come without apiVersion/kind
            it.setdefault("apiVersion", res.api_version)
            it.setdefault("kind", kind)
        return items, rv

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation: str = "Background", dry_run: bool = False) -> dict | None:
        """Delete one object; None when it was already gone."""
        try:
            return self.request("DELETE", res.path(namespace, name), body={
                "kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation,
                **({"dryRun": ["All"]} if dry_run else {})})
        except KubeError as e:
            if e.object_missing or e.namespace_missing:
                return None
            raise

    def version(self) -> dict:
        return self.request("GET", "/version")

    def watch_lines(self, path: str, query: dict, timeout: float) -> Iterator[dict]:
        """Events of one watch request (decoded JSON lines) until the server ends it."""
        q = dict(query, watch="true", allowWatchBookmarks="true", timeoutSeconds=max(1, int(timeout + 0.999)))
        raw = self.request("GET", path, query=q, timeout=(min(self.request_timeout, 10.0), timeout + 10.0),
                           stream=True)
        try:
            buf = b""
            for chunk in raw.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _connection_error(e, "WATCH", path, self.host) from None
        finally:
            raw.release_conn()

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> "Kube":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Kube({self.name!r}, host={self.host!r})"


def _status_error(status: int, reason: str, data: bytes, method: str, path: str) -> KubeError:
    body: dict = {}
    message = ""
    try:
        body = json.loads(data) if data else {}
        message = body.get("message", "") if isinstance(body, dict) else ""
    except ValueError:
        message = (data or b"").decode("utf-8", errors="replace").strip()[:500]
    if not isinstance(body, dict):
        body = {}
    return KubeError(status, reason or "", message or reason or f"HTTP {status}", body=body,
                     method=method, path=path)


def object_path(res: Resource, name: str | None = None, namespace: str | None = None, sub: str | None = None) -> str:
    return res.path(namespace, name, sub)


def client_from(source: Any = None, context: str | None = None, *, request_timeout: float | None = None,
                field_manager: str | None = None) -> Kube:
    """A :class:`Kube` for a cluster.

    ``source`` is a validated :class:`mlplat.params.Params` (its ``kubernetes`` section names the
    kubeconfig, context, field manager and request timeout; a lab site falls back to the lab's
    kubeconfig), a kubeconfig path, or None for ``$KUBECONFIG`` / ``~/.kube/config``.
    ``context`` overrides the kubeconfig's current context.
    """
    path: str | None = None
    timeout = 30.0
    manager = "mlplat"
    if source is not None and hasattr(source, "kubernetes"):
        kp = source.kubernetes
        path = kp.existing_kubeconfig
        context = context or kp.context
        timeout = kp.request_timeout
        manager = kp.field_manager
        lab = getattr(source, "lab", None)
        if not path and lab is not None:
            for cand in ("kubeconfig", "kubeconfig.yaml", "cluster/kubeconfig", "cluster/kubeconfig.yaml"):
                p = Path(os.path.expanduser(lab.state_dir)) / cand
                if p.exists():
                    path = str(p)
                    break
    elif source is not None:
        path = str(source)
    if path is None:
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    path = os.path.expanduser(path) if path else os.path.expanduser("~/.kube/config")
    if not Path(path).exists():
        raise FileNotFoundError(
            f"kubeconfig {path} does not exist: set kubernetes.existing_kubeconfig in the params "
            "(or run 30_kubernetes, which writes one)")
    cfg = type.__call__(k8s_client.Configuration)
    k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                persist_config=False)
    contexts, active = k8s_config.list_kube_config_contexts(path)
    ctx = active
    if context:
        ctx = next((c for c in contexts if c.get("name") == context), active)
    ns = ((ctx or {}).get("context") or {}).get("namespace") or "default"
    api = k8s_client.ApiClient(configuration=cfg)
    api.user_agent = "mlplat"
    return Kube(api, name=(ctx or {}).get("name") or "cluster", namespace=ns,
                request_timeout=request_timeout or timeout, field_manager=field_manager or manager,
                kubeconfig=path)


def qname(name: str) -> str:
    return quote(name, safe="")
