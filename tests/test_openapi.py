"""The OpenAPI document: valid OpenAPI 3.1, every route documented, served with the server's own
limits, and true of both running servers, as schemathesis shows.

Schemathesis runs its examples, coverage (boundaries, missing and malformed parameters, methods
the path does not support) and fuzzing phases against each server: the public API without
credentials; the internal API without credentials (every answer a JSON 401) and with the right
credential for each operation (a worker's, the peer's, the operator's). It fails on any 5xx, any
answer the document does not describe, a valid request refused or an invalid one accepted, and
a request that does not answer within REQUEST_TIMEOUT_S. Generation is derandomized with a fixed
seed, so a CI failure replays here as it is.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

import hypothesis
import pytest
import schemathesis
from aiohttp.test_utils import make_mocked_request
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from common.credentials import Role, derive
from server import openapi
from server.app import build_app
from server.config import ServerSettings
from server.errors import BadRequest
from server.node import Node
from server.web import float_param
from tests.cluster import Cluster, Completer, http, operator_headers, worker_headers

SEED = 20_260_901
MAX_EXAMPLES = 12  # fuzzing examples per operation, on top of the examples and coverage phases
REQUEST_TIMEOUT_S = 10.0  # the longest wait the servers under test allow is LONG_POLL_MAX_S
LONG_POLL_MAX_S = 1.0  # keeps long-polls short; the document shows the configured limit
LIMITS = {"long_poll_max_s": LONG_POLL_MAX_S, "max_iterations": 1000, "max_body_bytes": 4096}
WORKER_ID = "schemathesis"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


# -- the document itself -------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1():
    document = openapi.spec()
    assert document["openapi"].startswith("3.1.")
    validate_openapi(document)
    schemathesis.openapi.from_dict(document)  # and schemathesis can use it


def documented(document: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }


def test_every_route_the_app_registers_is_documented_and_nothing_else(tmp_path):
    node = Node(ServerSettings(state_dir=tmp_path, launcher="none", peer="http://127.0.0.1:9"), "secret")
    app = build_app(node)
    # aiohttp answers HEAD for every GET (the document says so once, in its description).
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routes == documented(openapi.spec())


def test_patterns_are_anchored_so_they_match_whole_strings():
    def patterns(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
            return own + [p for key, child in node.items() if key != openapi.LIMIT_KEY for p in patterns(child)]
        if isinstance(node, list):
            return [p for child in node for p in patterns(child)]
        return []

    found = patterns(openapi.spec())
    assert found
    for pattern in found:
        assert pattern.startswith("^") and pattern.endswith("$"), pattern


def test_the_file_shows_the_default_limits_and_a_server_serves_its_own():
    assert openapi.document_for(ServerSettings()) == openapi.spec()
    served = openapi.document_for(ServerSettings(**LIMITS))
    enqueue = served["paths"]["/enqueue"]["put"]
    assert enqueue["parameters"][0]["schema"]["maximum"] == LIMITS["max_iterations"]
    body = enqueue["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert body["maxLength"] == LIMITS["max_body_bytes"]
    wait = served["components"]["parameters"]["Wait"]["schema"]["pattern"]
    assert re.fullmatch(wait, "1") and re.fullmatch(wait, "0.25") and not re.fullmatch(wait, "1.5")


def server_takes(text: str, limit: float) -> bool:
    """Whether the server's own parser takes `text` as a number 0..limit."""
    request = make_mocked_request("GET", "/?wait=" + urllib.parse.quote(text, safe=""))
    try:
        float_param(request, "wait", 0.0, limit, 0.0)
    except BadRequest:
        return False
    return True


decimals = st.one_of(
    st.from_regex(r"[0-9]{1,10}(\.[0-9]{0,10})?", fullmatch=True),
    st.floats(min_value=0, max_value=1e10).map(repr),
    st.decimals(min_value=0, max_value=1000, places=4).map(str),
    st.text(alphabet="0123456789.-+e \n", max_size=12),
)


@hypothesis.settings(max_examples=400, derandomize=True, deadline=None)
@hypothesis.given(
    text=decimals,
    limit=st.sampled_from([0.0, 0.5, 1.0, 2.25, 20.0, 100.0, 0.1, 1 / 3, 999_999_999.5, 1e12]),
)
def test_the_wait_pattern_takes_exactly_what_the_server_takes(text, limit):
    assert bool(re.fullmatch(openapi.decimal_pattern(limit), text)) == server_takes(text, limit), (text, limit)


# -- schemathesis against both servers -----------------------------------------------------------
@pytest.fixture(scope="module")
def api_cluster(tmp_path_factory):
    """Two servers with short long-polls and small limits (so boundaries are cheap to reach), and
    a worker completing their jobs so results exist to pull and look up."""
    cluster = Cluster(tmp_path_factory.mktemp("openapi"), launcher="none", **LIMITS)
    try:
        cluster.start()
        with Completer(cluster.servers, cluster.token):
            yield cluster
    finally:
        cluster.close()


@dataclasses.dataclass(frozen=True)
class Target:
    url: str
    secret: str
    credentials: bool

    def headers(self, path: str) -> dict[str, str]:
        """The right credential for the operation (none when testing without)."""
        if not self.credentials:
            return {}
        if path.startswith("/internal/peer/"):
            return {"Authorization": f"Bearer {derive(self.secret, Role.PEER)}"}
        if path == "/internal/status":
            return operator_headers(self.secret)
        return worker_headers(self.secret, WORKER_ID)


def schema_for(paths: str) -> schemathesis.BaseSchema:
    """The document the servers under test serve (checked below), for the operations under `paths`."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            # 413 is how this API rejects a body over the limit.
            "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "409", "413"]}},
        }
    )
    schema = schemathesis.openapi.from_dict(openapi.document_for(ServerSettings(**LIMITS)), config=config)
    return schema.include(path_regex=paths)


@pytest.fixture(scope="module", params=["a", "b"])
def public_target(request, api_cluster) -> Target:
    server = getattr(api_cluster, request.param)
    return Target(server.url, api_cluster.token, credentials=False)


@pytest.fixture(
    scope="module",
    params=[(s, c) for s in ("a", "b") for c in (False, True)],
    ids=lambda p: f"{p[0]}-{'creds' if p[1] else 'anon'}",
)
def internal_target(request, api_cluster) -> Target:
    server, credentials = request.param
    return Target(getattr(api_cluster, server).url, api_cluster.token, credentials=credentials)


def test_both_servers_serve_the_document_with_their_limits(api_cluster):
    expected = openapi.document_for(ServerSettings(**LIMITS))
    for server in api_cluster.servers:
        response = http("GET", server.url + "/openapi.json")
        assert response.status == 200 and response.json() == expected


def made_up_worker_credential(case) -> bool:
    """A credential-shaped bearer with a bad X-Worker-Id is a 400 (documented): for which worker?"""
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    return str(headers.get("authorization", "")).startswith("Bearer dw1.") and not case.operation.path.startswith(
        ("/internal/peer/", "/internal/status")
    )


def declared_query(case) -> set[str]:
    operation = openapi.spec()["paths"][case.operation.path][case.operation.method.lower()]
    parameters = [
        openapi.spec()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        for p in operation.get("parameters", [])
    ]
    return {p["name"] for p in parameters if p["in"] == "query"}


def integral_floats(value: object) -> bool:
    """Whether a JSON value holds a number like 0.0, which JSON Schema counts as an integer."""
    if isinstance(value, dict):
        return any(integral_floats(v) for v in value.values())
    if isinstance(value, list):
        return any(integral_floats(v) for v in value)
    return isinstance(value, float) and value.is_integer()


def validate(case, response) -> None:
    """Every check, with two things JSON Schema cannot say: an unknown query parameter is ignored
    (schemathesis takes one for a violation the server must refuse), and an integer field takes a
    JSON integer only (0, not 0.0, which JSON Schema counts as an integer)."""
    excluded = []
    if set(case.query or {}) - declared_query(case):
        excluded.append(negative_data_rejection)
    if integral_floats(case.body):
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded or None)


@schema_for("^/(?!internal/)").parametrize()
def test_the_public_api_is_what_the_document_says(case, public_target):
    response = case.call(base_url=public_target.url, timeout=REQUEST_TIMEOUT_S)
    validate(case, response)
    assert response.status_code < 500, (response.status_code, response.text[:300])


@schema_for("^/internal/").parametrize()
def test_the_internal_api_is_what_the_document_says_with_and_without_credentials(case, internal_target):
    target = internal_target
    if target.credentials:
        # The right credential in the security headers schemathesis sends (those it leaves out on
        # purpose stay out: that request must be refused).
        right = target.headers(case.operation.path)
        headers = {name: value for name, value in right.items() if name in (case.headers or {})}
        response = case.call(base_url=target.url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        validate(case, response)
        # A 401 only where schemathesis left the credential out (a negative case).
        refused = response.status_code == 401 and not (case.meta and case.meta.generation.mode.is_negative)
        assert not refused, (case.method, case.formatted_path, case.headers, response.text[:300])
        return
    # Without credentials (or with whatever schemathesis makes up for them): a 401, nothing done.
    response = case.call(base_url=target.url, timeout=REQUEST_TIMEOUT_S)
    what = (case.method, case.formatted_path, case.headers, response.status_code, response.text[:300])
    assert response.status_code == 401 or made_up_worker_credential(case), what
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), what
    assert isinstance(response.json().get("error"), str), what
    validate(case, response)


def test_any_path_under_internal_needs_credentials_whatever_the_method(api_cluster):
    """Beyond the documented operations: unknown paths, methods and spellings under /internal/."""
    paths = ("/internal/", "/internal/nothing", "/internal/peer/nothing", "/INTERNAL/lease", "/internal%2Flease")
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        for path in paths:
            response = http(method, api_cluster.a.url + path, data=b"{}", timeout=REQUEST_TIMEOUT_S)
            assert response.status == 401, (method, path, response.status, response.body)
            assert isinstance(response.json()["error"], str)
