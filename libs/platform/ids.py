"""Identifiers: one instance id per process, request ids in OpenAI's shape."""

from __future__ import annotations

import os
import socket
import uuid


def instance_id(configured: str, service: str) -> str:
    """The process's id on the bus: the configured one, else ``<service>-<host>-<pid>`` made subject-safe."""
    raw = configured or f"{service}-{socket.gethostname()}-{os.getpid()}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw)


def new_request_id(prefix: str = "chatcmpl-") -> str:
    """A fresh request id: ``prefix`` and 32 hex digits, as OpenAI's look (``chatcmpl-`` for a chat
    completion, ``cmpl-`` for a text completion)."""
    return prefix + uuid.uuid4().hex
