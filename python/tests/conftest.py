# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: which backends to run, and how a missing one counts.

DISTRATTN_REQUIRE_BACKENDS (comma-separated, as for `make check`) names
backends that must be there: a test for a named backend that is not
available fails instead of being skipped. DA_TEST_SEED fixes the random
inputs (otherwise fresh ones, the seed printed on failure)."""
import os
import random

import pytest

import distrattn

REQUIRED = {b for b in os.environ.get("DISTRATTN_REQUIRE_BACKENDS", "").split(",") if b}


def need_backend(name):
    """Skip (or, when required, fail) unless backend `name` is available."""
    ok, why = distrattn.backend_available(name, reason=True)
    if ok:
        return
    msg = f"backend {name} not available: {why}"
    if name in REQUIRED:
        pytest.fail(msg + " (DISTRATTN_REQUIRE_BACKENDS names it)")
    pytest.skip(msg)


@pytest.fixture
def seed(request):
    s = os.environ.get("DA_TEST_SEED")
    s = int(s) if s else random.randrange(2**32)
    request.node.user_properties.append(("DA_TEST_SEED", s))
    return s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if rep.failed:
        for k, v in item.user_properties:
            if k == "DA_TEST_SEED":
                rep.sections.append(("random inputs", f"DA_TEST_SEED={v} repeats them"))
