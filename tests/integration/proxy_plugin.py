"""A plugin for proxy.py (a real forward proxy) used by the egress tests.

Host names under `.itwin.test` resolve to 127.0.0.1 here and nowhere else, as names of a
cluster's outside world resolve only at its egress proxy. Every upstream the proxy opens is
appended to the file named by `ITWIN_TEST_PROXY_LOG` ("host:port" a line), so a test can tell
what went through the proxy and what did not.
"""

from __future__ import annotations

import os

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

TEST_DOMAIN = ".itwin.test"


class LoopbackTestNames(HttpProxyBasePlugin):
    def resolve_dns(self, host: str, port: int) -> tuple[str | None, None]:
        return ("127.0.0.1" if host.endswith(TEST_DOMAIN) else None), None

    def before_upstream_connection(self, request: HttpParser) -> HttpParser:
        host = (request.host or b"").decode(errors="replace")
        with open(os.environ["ITWIN_TEST_PROXY_LOG"], "a") as log:
            log.write(f"{host}:{request.port}\n")
        return request
