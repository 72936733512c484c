"""Shapes every bounded context uses: token usage and errors meant for the client."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorReport(BaseModel):
    """An error meant for the client: the OpenAI error envelope's fields plus the HTTP status."""

    http_status: int
    type: str
    code: str | None
    message: str
    param: str | None = None
    retry_after: int | None = None


class Usage(BaseModel):
    """Token counts of an attempt; ``estimated`` when the upstream reported none and we counted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False
