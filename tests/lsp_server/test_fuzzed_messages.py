"""`fimble lsp` under fuzzed stdin (tests/lsp_server/stdio_fuzz.py): every request gets a result or
an LSP error, the server lives, and a valid completion is served after each case. A seeded subset of
about 500 cases; benchmarks/fuzz_campaign.py runs the full campaign."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lsp_server.stdio_fuzz import RawServer, cases, requests, run_case

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
LIFETIME = settings(FUZZ, max_examples=100)


@pytest.fixture(scope="module")
def server(fimble_env):
    server = RawServer(fimble_env)
    server.initialize()
    yield server
    server.close()


@FUZZ
@given(data=st.data())
def test_every_fuzzed_request_is_answered_and_serving_goes_on(server, data):
    run_case(server, data.draw(cases(server)))


def test_a_message_over_the_size_limit_is_skipped_unread(server):
    size = 64 * 1024 * 1024 + 1
    server.write(b"Content-Length: %d\r\n\r\n" % size + b" " * size)
    server.assert_serves_a_completion()


@pytest.fixture(scope="module")
def uninitialized(fimble_env):
    server = RawServer(fimble_env)
    yield server
    server.close()


@LIFETIME
@given(request=requests())
def test_requests_before_initialize_are_refused_as_not_initialized(uninitialized, request):
    request_id = uninitialized.request(*request)
    answer = uninitialized.wait_for([request_id])[request_id]
    assert answer["error"]["code"] in (-32002, -32602), answer  # not initialized, or unusable params


def test_after_requests_before_initialize_the_server_initializes_and_serves(uninitialized):
    uninitialized.initialize()
    uninitialized.assert_serves_a_completion()


@pytest.fixture(scope="module")
def shut_down(fimble_env):
    server = RawServer(fimble_env)
    server.initialize()
    answer = server.wait_for([server.request("shutdown")])
    assert next(iter(answer.values()))["result"] is None
    yield server
    server.close()


@LIFETIME
@given(request=requests())
def test_requests_after_shutdown_are_refused_as_invalid(shut_down, request):
    request_id = shut_down.request(*request)
    answer = shut_down.wait_for([request_id])[request_id]
    assert answer["error"]["code"] in (-32600, -32602), answer  # invalid request, or unusable params


def test_exit_after_shutdown_ends_the_server_cleanly(shut_down):
    shut_down.notify("exit")
    assert shut_down.process.wait(timeout=30) == 0

