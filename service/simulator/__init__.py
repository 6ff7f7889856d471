"""An offline simulator of the Bentley iTwin Platform REST API the worker calls.

It serves the five endpoints of the API reference pages (create and get workspace, create
job, create repository, create application), the job lifecycle beyond them (get, submit,
cancel, progress of a job, run in simulated time), the rest of each resource's lifecycle
(delete, update, get and list: shared/design/api-beyond.md), the eight Reality Modeling v2
operations (jobs that run from their creation, a filtered and paged list), the OAuth2 token
endpoint (signed JWT access tokens) and OpenID Connect discovery with its JWKS on one port,
answering with the
pages' paths, headers, bodies and error objects, and lets tests inject rate limiting, latency,
hangs, server errors, lost answers and job failures at runtime through `/_simulator/*`.
`README.md` beside this file tells how to point a client at it.
"""

from .app import build_app
from .cli import add_arguments, config_from_args
from .config import SimulatorConfig
from .contextcapture import NO_CLUSTER_ITWIN_ID
from .itwins import FORBIDDEN_ITWIN_ID, KNOWN_ITWIN_IDS
from .pipeline import ACCEPT_MEDIA_TYPE, ACCEPT_V2_MEDIA_TYPE
from .requestlog import RecordedRequest
from .server import DEFAULT_PORT, ServerCertificate, SimulatorHandle, running_simulator, serve
from .state import SimulatorState

__all__ = [
    "ACCEPT_MEDIA_TYPE",
    "ACCEPT_V2_MEDIA_TYPE",
    "DEFAULT_PORT",
    "FORBIDDEN_ITWIN_ID",
    "KNOWN_ITWIN_IDS",
    "NO_CLUSTER_ITWIN_ID",
    "RecordedRequest",
    "ServerCertificate",
    "SimulatorConfig",
    "SimulatorHandle",
    "SimulatorState",
    "add_arguments",
    "build_app",
    "config_from_args",
    "running_simulator",
    "serve",
]
