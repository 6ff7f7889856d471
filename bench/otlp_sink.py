"""A local OTLP/HTTP traces receiver for `bench.throughput --tracing`: decodes every export (as
a collector would) and answers 200; prints how many spans it took when it stops.

`python -m bench.otlp_sink PORT`
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench._common import terminate_on_sigterm

READY = "otlp sink listening"
_ANSWER = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class _Sink(BaseHTTPRequestHandler):
    spans = 0

    def do_POST(self) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        _Sink.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(_ANSWER)))
        self.end_headers()
        self.wfile.write(_ANSWER)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    terminate_on_sigterm()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Sink)
    print(READY, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"spans received: {_Sink.spans}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
