"""The daemon's socket under fuzzed frames on several connections (tests/models/socket_fuzz.py):
every whole frame is answered, the daemon lives, and a new connection is served afterwards. A seeded
subset; benchmarks/fuzz_campaign.py runs the full campaign."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.models.socket_fuzz import FuzzedDaemon, run_socket_case, socket_cases

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def daemon(tiny_checkpoint, tmp_path_factory):
    daemon = FuzzedDaemon(tiny_checkpoint, tmp_path_factory.mktemp("fuzzed-daemon"))
    yield daemon
    daemon.close()


@FUZZ
@given(data=st.data())
def test_every_fuzzed_frame_is_answered_and_serving_goes_on(daemon, data):
    run_socket_case(daemon, data.draw(socket_cases(daemon.vocab_size)))


def test_the_fuzzed_daemon_left_no_request_behind(daemon):
    """After the campaign, nothing is running: every request was finished or cancelled."""
    from tests.models.test_daemon import Conversation

    status = Conversation(daemon.socket).ask({"id": 1, "op": "status"})["status"]
    assert status["connection_handles"] == 0
    assert all(role.get("running", 0) == 0 for role in status["roles"].values()), status["roles"]
