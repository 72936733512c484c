"""Requests of the router's own that a hoster cannot tell from a client's: the probes' (``probes.py``), and
any later check of a hoster's honesty.

A hoster sees all of an attempt it is offered: the body, its parameters, the request id, the reply subject
and when it comes. A request sent to judge a hoster must look like a client's on every one of them, or a
dishonest hoster behaves only when it is judged:

- the body is a conversation drawn from a pool of natural prompts (``prompts.jsonl`` beside this module, or
  the operator's ``CS_ROUTER_PROBE_PROMPTS_FILE``) with the parameters clients send, drawn with a spread like
  theirs (a completion limit under either name or none, sometimes a temperature or a top_p, streamed or
  not, a stream's usage asked for or not), and no field a client's body could not have;
- the request id is a fresh one of a client's shape, and the reply subject a client's
  (``ingress.reply.<ingress>.<request>``) under the id of an ingress whose requests this router routed
  (``RecentIngresses``): that ingress receives the frames too and drops them, as it drops those of any
  request it does not know;
- the dispatch's first-byte deadline, prices and limits are computed from the body as a client's are.

The answer is read from the offer's frames (``Answer``) and judged (``check_answer``) on the request's own
usage bounds, the network's rule for every request.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import orjson

from libs.contracts import frames, subjects
from libs.contracts.common import Usage
from libs.contracts.pricing import UsageBounds
from libs.contracts.routing import RouteRequest, RoutingPreferences
from libs.platform.ids import instance_id, new_request_id
from services.router.service import RequestProfile

DEFAULT_PROMPTS = Path(__file__).with_name("prompts.jsonl")
ROLES = frozenset({"system", "user", "assistant"})
# Routed requests whose ingress is remembered: a covert request names the ingress of one of them, so each
# ingress is named about as often as it sends requests.
RECENT_ROUTES = 32
# The completion limits clients set (a limit is drawn for 85% of requests, split between ``max_tokens`` and
# ``max_completion_tokens``; the others set none and get the router's default).
COMPLETION_LIMITS = (16, 32, 50, 64, 100, 128, 150, 200, 256, 256, 300, 400, 500, 512, 512, 800, 1000, 1024, 2048)
TEMPERATURES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.7, 0.8, 1.0, 1.2)
TOP_PS = (0.8, 0.9, 0.95, 1.0)
# The most of an answer read: a stream of the default 4096 tokens, one chunk per token, fits well within it.
ANSWER_LIMIT_BYTES = 8 * 1024 * 1024

Conversation = list[dict[str, str]]


class PromptPool:
    """Conversations a client could send: one per line of a JSON Lines file, a string (one user message) or
    a list of ``{"role", "content"}`` messages that ends with the user's."""

    def __init__(self, conversations: Sequence[Conversation]) -> None:
        if not conversations:
            raise ValueError("a prompt pool needs at least one conversation")
        self._conversations = tuple(conversations)

    def __len__(self) -> int:
        return len(self._conversations)

    def __iter__(self) -> Iterator[Conversation]:
        """Every conversation, copies of their own."""
        return ([dict(message) for message in conversation] for conversation in self._conversations)

    @classmethod
    def load(cls, path: Path) -> PromptPool:
        """The pool in ``path``; raises ``ValueError`` naming the first line that is no conversation."""
        conversations = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                conversations.append(_conversation(orjson.loads(line)))
            except ValueError as exc:  # orjson's JSONDecodeError among them
                raise ValueError(f"{path}:{number}: {exc}") from None
        return cls(conversations)

    def draw(self, rng: random.Random) -> Conversation:
        """One conversation, a copy of its own."""
        return [dict(message) for message in rng.choice(self._conversations)]


def _conversation(doc: Any) -> Conversation:
    if isinstance(doc, str):
        doc = [{"role": "user", "content": doc}]
    if not isinstance(doc, list) or not doc:
        raise ValueError("neither a prompt nor a list of messages")
    for message in doc:
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or message["role"] not in ROLES
            or not isinstance(message["content"], str)
            or not message["content"].strip()
        ):
            raise ValueError(f"not a message with a role and some text: {message!r}")
    if doc[-1]["role"] != "user":
        raise ValueError("the last message is not the user's")
    return doc


class RecentIngresses:
    """The ingress ids of the last requests this router routed (``RECENT_ROUTES``), one entry per request."""

    def __init__(self, size: int = RECENT_ROUTES) -> None:
        self._ids: deque[str] = deque(maxlen=size)

    def saw(self, reply_subject: str) -> None:
        """A request with reply subject ``reply_subject`` was routed."""
        ingress_id = subjects.ingress_of(reply_subject)
        if ingress_id is not None:
            self._ids.append(ingress_id)

    def pick(self, rng: random.Random) -> str | None:
        """The ingress of one of the last requests routed (so each ingress as often as it sends them), or
        ``None`` before any."""
        return rng.choice(self._ids) if self._ids else None


def fresh_ingress_id(rng: random.Random) -> str:
    """An id shaped like an ingress instance's (``ingress-<host>-<pid>``, as ``instance_id`` makes it) for a
    router that routed no request yet: this host's name with ``router`` read as ``ingress`` and every other
    letter and digit redrawn (a Kubernetes pod's name keeps its shape, and names no real pod)."""
    parts = []
    for part in socket.gethostname().split("-"):
        parts.append("ingress" if part == "router" else "".join(_redrawn(c, rng) for c in part))
    pid = 1 if os.getpid() == 1 else rng.randint(2, 4_194_304)  # a container's main process is pid 1
    return instance_id(f"ingress-{'-'.join(parts)}-{pid}", "ingress")


def _redrawn(c: str, rng: random.Random) -> str:
    if c.isdigit():
        return rng.choice("0123456789")
    if c.islower():
        return rng.choice("abcdefghijklmnopqrstuvwxyz")
    if c.isupper():
        return rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return c


def draw_body(model: str, pool: PromptPool, rng: random.Random) -> dict[str, Any]:
    """A chat completion body as a client sends one for ``model``: a conversation of ``pool`` and parameters
    drawn as clients set them (see the module's docstring)."""
    body: dict[str, Any] = {"model": model, "messages": pool.draw(rng)}
    limit = rng.random()
    if limit < 0.7:
        body["max_tokens"] = rng.choice(COMPLETION_LIMITS)
    elif limit < 0.85:
        body["max_completion_tokens"] = rng.choice(COMPLETION_LIMITS)
    if rng.random() < 0.4:
        body["temperature"] = rng.choice(TEMPERATURES)
    if rng.random() < 0.15:
        body["top_p"] = rng.choice(TOP_PS)
    if rng.random() < 0.5:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    elif rng.random() < 0.5:
        body["stream"] = False  # as some clients say it; others leave it out
    return body


class CovertRequest(NamedTuple):
    """One request of the router's own, as an ingress would have routed it for a client, and what its first
    offer answers on."""

    route: RouteRequest
    # The offer's reply subject (``subjects.offer_subject`` of attempt 1, as a client's first offer).
    reply: str
    # The prompt estimate routing uses for a client's request (its first-byte deadline is computed on it).
    prompt_tokens: int
    # The request's usage bounds, as for a client's.
    bounds: UsageBounds


def covert_request(
    model: str, pool: PromptPool, ingresses: RecentIngresses, default_max_tokens: int, rng: random.Random
) -> CovertRequest:
    """A chat completion request for ``model`` that no hoster can tell from a client's."""
    body = draw_body(model, pool, rng)
    request_id = new_request_id()
    reply_subject = subjects.reply_subject(ingresses.pick(rng) or fresh_ingress_id(rng), request_id)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    route = RouteRequest(
        request_id=request_id,
        reply_subject=reply_subject,
        model=model,
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        created=int(time.time()),
        routing=RoutingPreferences(),
        body=body,
    )
    return CovertRequest(
        route,
        subjects.offer_subject(reply_subject, 1, secrets.token_hex(12)),
        RequestProfile.of(body, default_max_tokens).prompt_tokens,
        UsageBounds.of(body, len(orjson.dumps(body)), default_max_tokens),
    )


class Answer:
    """An answer as the frames of its offer bring it (frames in, no I/O): a non-stream request's one
    ``chat.completion``, or a stream's chunks up to its end frame; ``check_answer`` judges it."""

    def __init__(self, stream: bool, limit_bytes: int = ANSWER_LIMIT_BYTES) -> None:
        self.stream = stream
        self.completion: bytes | None = None
        self.completed_at: float | None = None
        # A stream's chunk frames: (sequence number, body, when it arrived).
        self.chunks: list[tuple[int, bytes, float]] = []
        self.over = False
        # The hoster sent an error frame: it says the attempt failed.
        self.failed = False
        # What broke the framing (too large, a frame of the other mode), if anything did.
        self.problem: str | None = None
        self._bytes = 0
        self._limit = limit_bytes

    @property
    def started(self) -> bool:
        """Whether any of the answer came."""
        return self.completion is not None or bool(self.chunks)

    def take(self, frame: frames.Frame, now: float) -> bool:
        """Take one frame (``now`` on the monotonic clock); whether the answer is over."""
        if self.over:
            return True
        self._bytes += len(frame.body)
        if self._bytes > self._limit:
            self.problem = f"the answer is larger than {self._limit} bytes"
        elif frame.kind == frames.ERROR:
            self.failed = True
        elif frame.kind == frames.COMPLETION:
            if self.stream:
                self.problem = "a whole completion came for a stream"
            else:
                self.completion, self.completed_at = frame.body, now
        elif frame.kind == frames.CHUNK:
            if not self.stream:
                self.problem = "stream chunks came for a non-stream request"
            else:
                self.chunks.append((frame.seq, frame.body, now))
                return False
        elif frame.kind == frames.END and self.stream:
            pass
        else:
            return False  # keepalives
        self.over = True
        return True


class Judgement(NamedTuple):
    """What is wrong with an answer (``None``: nothing), the completion tokens it is credited with, and when
    its first content arrived (monotonic clock)."""

    problem: str | None
    completion_tokens: int = 0
    first_content: float | None = None


def check_answer(request: CovertRequest, answer: Answer, reported: Usage | None = None) -> Judgement:
    """Judge a finished answer: one choice with text, and usage its text can hold (``UsageBounds``: a token is
    at least one byte of text, plus the end token; the prompt no more tokens than the body's bytes, plus the
    template's). A stream that was not asked for its usage is held to the hoster's report (``reported``), if
    any; without one it is credited no tokens."""
    if answer.problem is not None:
        return Judgement(answer.problem)
    read = _streamed(answer.chunks) if answer.stream else _completed(answer.completion or b"", answer.completed_at)
    if isinstance(read, str):
        return Judgement(read)
    text, usage, first = read
    if not text:
        return Judgement("the answer has no text")
    source = "usage"
    if usage is None and answer.stream and not request.route.include_usage:
        if reported is None:
            return Judgement(None, 0, first)
        usage, source = reported.model_dump(), "usage reported"
    if not isinstance(usage, dict):
        return Judgement("the answer has no usage")
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not _count(prompt) or not _count(completion):
        return Judgement(f"the {source} is not two counts: {prompt!r}, {completion!r}")
    text_bytes = len(text.encode())
    bounds = request.bounds.with_text(text_bytes, 1)
    if completion > bounds.completion:
        return Judgement(
            f"{source} claims {completion} completion tokens for {text_bytes} bytes of text, "
            f"at most {request.bounds.completion} asked"
        )
    if prompt > bounds.prompt:
        return Judgement(f"{source} claims {prompt} prompt tokens, at most {bounds.prompt} for this request")
    return Judgement(None, completion, first)


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _completed(body: bytes, at: float | None) -> tuple[str, Any, float | None] | str:
    """A non-stream answer's text and usage, or what is wrong with it."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the answer is not JSON"
    if not isinstance(doc, dict) or doc.get("object") != "chat.completion":
        return "the answer is not a chat.completion"
    choices = doc.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return "the answer does not have exactly one choice"
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return "the answer has no text"
    return content, doc.get("usage"), at


def _streamed(chunks: list[tuple[int, bytes, float]]) -> tuple[str, Any, float | None] | str:
    """A stream's text (its chunks assembled in sequence order), its usage (the last chunk's that has one)
    and when its first content arrived, or what is wrong with it."""
    text: list[str] = []
    usage: Any = None
    first: float | None = None
    for _, body, at in sorted(chunks, key=lambda chunk: chunk[0]):
        for line in frames.chunks(body):
            try:
                doc: Any = orjson.loads(line)
            except orjson.JSONDecodeError:
                return "a chunk is not JSON"
            if not isinstance(doc, dict) or doc.get("object") != "chat.completion.chunk":
                return "a chunk is not a chat.completion.chunk"
            choices = doc.get("choices")
            if not isinstance(choices, list):
                return "a chunk has no choices"
            for choice in choices:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    return "the answer does not have exactly one choice"
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if content is not None and not isinstance(content, str):
                    return "a chunk's content is not text"
                if content:
                    text.append(content)
                    first = at if first is None else first
            if doc.get("usage") is not None:
                usage = doc["usage"]
    return "".join(text), usage, first
