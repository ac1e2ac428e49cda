"""The black-box clients' side of `wrangler dev`'s idle keep-alive race (Worker target only).

`wrangler dev` puts a proxy (a workerd of its own, wrangler's ProxyWorker) in front of the
Worker's workerd. workerd closes a kept-alive connection after 5 s without a request, and
both clients of it keep idle connections for about as long, so a request sent on a connection
as its idle time runs out can meet the close:

* client -> proxy: the client's pool (httpx and the SDKs' httpx2, `keepalive_expiry` 5 s)
  reuses the connection as the proxy closes it: "Server disconnected without sending a
  response" (or a read error) before a byte of an answer;
* proxy -> Worker: the proxy's own pool does the same; its fetch fails and it answers the
  client with a plain-text 503 "Your worker restarted mid-request" (for any failed POST:
  its check for a reload compares the request's URL with the Worker's root URL).

Measured with 10 clients each sending a chat request every 4.95-5.05 s for 200 s
(wrangler 4.86): 19 of 400 lost (16 + 1 connection errors, 2 such 503s) with the default
pools; with the clients' keep-alive at 2 s, no connection error and 30 such 503s, and the
gateway's usage records matched the 200 answers exactly (370 of 370): the lost requests never
reached the Worker. Neither answer is Conduit's, and on a loaded CI machine either can land on
any test, so for the Worker target every client of this process:

* keeps an idle connection for at most CLIENT_KEEPALIVE_S, under workerd's 5 s;
* sends again (at most RESENDS times) a request the proxy answered with that 503, which it
  gives only when its fetch to the Worker failed. Each resend is counted in `resent` and
  reported at the end of the run.

The other targets are untouched: nothing here is installed for them.
"""
from __future__ import annotations

import threading
from typing import Any

import httpx

CLIENT_KEEPALIVE_S = 2.0
RESENDS = 3
RESTARTED = b"Your worker restarted mid-request"

resent = 0
_lock = threading.Lock()


def _lost_by_proxy(response: Any) -> bool:
    """Whether `response` is the proxy's own 503 for a fetch to the Worker that failed."""
    if response.status_code != 503 or response.headers.get("retry-after") != "0":
        return False
    if not response.headers.get("content-type", "").startswith("text/plain"):
        return False
    response.read()
    return response.content.startswith(RESTARTED)


def _patch(module: Any) -> None:
    transport = module.HTTPTransport
    if getattr(transport, "_conduit_dev_proxy", False):
        return
    init, handle = transport.__init__, transport.handle_request

    def __init__(self, *args: Any, **kw: Any) -> None:
        limits = kw.get("limits") or module.Limits(max_connections=100, max_keepalive_connections=20)
        expiry = limits.keepalive_expiry
        kw["limits"] = module.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=CLIENT_KEEPALIVE_S if expiry is None else min(expiry, CLIENT_KEEPALIVE_S))
        init(self, *args, **kw)

    def handle_request(self, request: Any) -> Any:
        global resent
        for attempt in range(RESENDS + 1):
            response = handle(self, request)
            if attempt == RESENDS or not _lost_by_proxy(response):
                return response
            response.close()
            with _lock:
                resent += 1
        return response

    transport.__init__ = __init__
    transport.handle_request = handle_request
    transport._conduit_dev_proxy = True


def install() -> None:
    """Applies the two rules above to httpx's and httpx2's (the SDKs') transports."""
    _patch(httpx)
    try:
        import httpx2
    except ImportError:
        return
    _patch(httpx2)
