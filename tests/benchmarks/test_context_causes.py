"""The pure parts of benchmarks/context_causes.py: how a hole's outcome and its needs are read."""

from __future__ import annotations

import pytest

from benchmarks.context_causes import first_difference, names_the_line_needs, outcome


@pytest.mark.parametrize(
    "with_passed, without_passed, expected",
    [(True, False, "gained"), (False, True, "lost"), (True, True, "both"), (False, False, "neither")],
)
def test_outcome_pairs_the_two_answers(with_passed, without_passed, expected):
    assert outcome({"with": {"passed": with_passed}, "without": {"passed": without_passed}}) == expected


def test_a_line_needs_only_the_names_its_document_lacks():
    document = "from shop.api import Client\n\n\ndef total(orders):\n    client = Client()\n    \n"
    assert names_the_line_needs("return client.fetch_orders(orders, limit)", document) == {"fetch_orders", "limit"}
    assert names_the_line_needs("return client", document) == set()


def test_first_difference_is_where_two_contexts_part():
    assert first_difference("<|file_sep|>a.py\nx", "<|file_sep|>b.py\nx") == len("<|file_sep|>")
    assert first_difference("same", "same and more") == 4
