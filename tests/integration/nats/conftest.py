"""nats-py leaves the socket of a connection the server refused or closed (an authorization violation, a
revocation) to the garbage collector; collect it after each test here, where that is expected, rather than
in whatever test runs next."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_refused_sockets() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
