"""Where the service may listen: without an API key, on loopback only. `emogen serve`
checks the host it is given; a replica checks where its Serve cluster's proxies listen, so
`serve run serve/config.yaml` and `serve deploy` follow the same rule."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str | None, api_key: str | None) -> str | None:
    """Why the service must not listen on `host` (None: it may). Without an API key it only
    binds to loopback. `emogen serve` refuses to start on it, a replica refuses to
    construct (the rule for `serve run serve/config.yaml` and `serve deploy`)."""
    if host is None or api_key or is_loopback(host):
        return None
    return (f"refusing to serve on {host!r} without an API key: set --api-key (or EMOGEN_API_KEY, or args.api_key "
            "in serve/config.yaml) or bind to 127.0.0.1")


def proxy_host() -> str | None:
    """The address Serve's HTTP proxies bind (its controller's http_options.host), or None
    outside a Serve cluster."""
    # deferred: `emogen serve`'s parser imports this module (bind_refusal), and Ray takes seconds to import
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if not ray.is_initialized():
        return None
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    return ray.get(controller.get_http_config.remote()).host


def serving_refusal(api_key: str | None) -> str | None:
    """`bind_refusal` for where this Serve cluster's proxies listen: what a replica checks
    when it starts, whoever deployed it."""
    return bind_refusal(proxy_host(), api_key)
