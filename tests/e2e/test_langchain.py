"""LangChain's OpenAI integration (``langchain-openai``) against the whole stack, with only the base URL and the
key changed: ``ChatOpenAI`` (invoke, stream, tools, structured output; chat completions and, with
``use_responses_api=True``, the Responses API) and ``OpenAIEmbeddings`` (documents, queries, a small retrieval
by cosine similarity).

``OpenAIEmbeddings`` by default counts and splits its inputs with tiktoken, and sends the token ids, not the
text. tiktoken downloads its BPE file (``cl100k_base`` for a model name it does not know) from
openaipublic.blob.core.windows.net the first time; without internet access that download fails with
``requests.ConnectionError`` inside ``embed_documents``, before any request reaches the gateway. So the tests
that embed text set ``check_embedding_ctx_length=False``, as LangChain's own documentation advises for
OpenAI-compatible servers: the text goes as strings. The default path is exercised too, with tiktoken handed an
offline byte-level encoding: the gateway gets token arrays and the retrieval still finds its document.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import orjson
import pytest
import tiktoken
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from libs.devstack.stack import DEMO_EMBEDDING_MODEL, DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack

pytestmark = pytest.mark.e2e

REPLY_WORDS = 12  # the e2e simulator replies with 12 tokens, one word each
EMBEDDING_DIMENSIONS = 32  # the simulator's default width
PROMPT = "Write a haiku about GPUs"
DOCUMENTS = [
    "GPUs multiply matrices in parallel.",
    "The hoster's agent dials out to NATS.",
    "Billing reserves credits before a request is routed.",
]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"] = Field(description="The temperature unit")


class GetTime(BaseModel):
    """Get the local time in a city."""

    city: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The e2e stack, its demo hoster also serving ``demo-embedding`` for embeddings."""
    running = build_stack(embedding_model=DEMO_EMBEDDING_MODEL)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def chat(stack: Stack, api_key: str) -> ChatOpenAI:
    """``ChatOpenAI`` as its documentation shows it, pointed at the gateway."""
    return ChatOpenAI(base_url=stack.config.api_base, api_key=api_key, model=DEMO_MODEL, max_retries=0)


@pytest.fixture(scope="module")
def responses_chat(stack: Stack, api_key: str) -> ChatOpenAI:
    """``ChatOpenAI`` speaking the Responses API (``/v1/responses``) to the gateway."""
    return ChatOpenAI(
        base_url=stack.config.api_base, api_key=api_key, model=DEMO_MODEL, use_responses_api=True, max_retries=0
    )


@pytest.fixture
def sent_bodies() -> list[dict[str, Any]]:
    """The JSON bodies of the requests a client made through ``recording_client``."""
    return []


@pytest.fixture
def recording_client(sent_bodies: list[dict[str, Any]]) -> Iterator[httpx.Client]:
    """An ``httpx.Client`` (LangChain's ``http_client``) that keeps each request's JSON body."""

    def record(request: httpx.Request) -> None:
        sent_bodies.append(orjson.loads(request.content))

    with httpx.Client(event_hooks={"request": [record]}) as client:
        yield client


def embeddings_of(stack: Stack, api_key: str, **options: Any) -> OpenAIEmbeddings:
    """``OpenAIEmbeddings`` of the demo embedding model on the gateway."""
    # base_url and api_key are the aliases LangChain documents; the pydantic mypy plugin types the __init__ of a
    # model with populate_by_name and extra="forbid" by field names only (openai_api_base, openai_api_key); mypy
    # reports both keywords on the first one's line.
    return OpenAIEmbeddings(
        model=DEMO_EMBEDDING_MODEL,
        base_url=stack.config.api_base,  # type: ignore[call-arg]
        api_key=api_key,
        max_retries=0,
        **options,
    )


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine similarity of two vectors."""
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def nearest(query: list[float], vectors: list[list[float]]) -> int:
    """The index of the vector most similar to ``query`` by cosine."""
    return max(range(len(vectors)), key=lambda index: cosine(query, vectors[index]))


def streamed(chunks: Iterator[AIMessage]) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    """The chunks of a stream and their sum, as LangChain merges them (a model bound to tools is typed as
    streaming ``AIMessage``; what it yields are chunks)."""
    pieces: list[AIMessageChunk] = []
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk), chunk
        pieces.append(chunk)
    assert pieces, "the stream yielded nothing"
    total = pieces[0]
    for piece in pieces[1:]:
        total += piece
    return pieces, total


def test_invoke_answers_with_text_usage_and_metadata(chat: ChatOpenAI) -> None:
    answer = chat.invoke([HumanMessage(PROMPT)])
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str)
    assert len(answer.content.split()) == REPLY_WORDS
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.response_metadata["model_name"] == DEMO_MODEL
    assert answer.response_metadata["id"].startswith("chatcmpl-")
    assert answer.response_metadata["token_usage"]["cost"] > 0  # the gateway's extra field, passed through
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == REPLY_WORDS
    assert answer.usage_metadata["input_tokens"] > 0
    assert answer.usage_metadata["total_tokens"] == answer.usage_metadata["input_tokens"] + REPLY_WORDS


def test_stream_delivers_the_answer_in_pieces_that_join_to_the_invoked_one(chat: ChatOpenAI) -> None:
    whole = chat.invoke(PROMPT)
    pieces, total = streamed(chat.stream(PROMPT))
    texts = [piece.content for piece in pieces if piece.content]
    assert len(texts) >= REPLY_WORDS  # word by word, not one block at the end
    assert total.content == whole.content  # the simulated model answers a prompt the same way each time
    assert total.response_metadata["finish_reason"] == "stop"
    assert total.response_metadata["model_name"] == DEMO_MODEL
    # A custom base URL leaves LangChain's stream_usage off: no usage unless asked for.
    assert total.usage_metadata is None


def test_stream_usage_gives_the_stream_its_token_counts(chat: ChatOpenAI) -> None:
    whole = chat.invoke(PROMPT)
    _, total = streamed(chat.stream(PROMPT, stream_usage=True))
    assert total.content == whole.content
    assert total.usage_metadata is not None
    assert whole.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == REPLY_WORDS
    assert total.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]


def test_bound_tool_comes_back_as_a_parsed_tool_call(chat: ChatOpenAI) -> None:
    answer = chat.bind_tools([GetWeather]).invoke("What is the weather in Paris?")
    assert answer.response_metadata["finish_reason"] == "tool_calls"
    assert answer.invalid_tool_calls == []
    [call] = answer.tool_calls
    assert call["name"] == "GetWeather"
    assert call["type"] == "tool_call"
    assert call["id"] is not None
    assert call["id"].startswith("call_")
    arguments = GetWeather.model_validate(call["args"])  # the arguments satisfy the tool's schema
    assert arguments.city
    assert arguments.unit in ("celsius", "fahrenheit")


def test_streamed_tool_call_merges_into_the_same_call(chat: ChatOpenAI) -> None:
    with_tools = chat.bind_tools([GetWeather])
    whole = with_tools.invoke("What is the weather in Paris?")
    pieces, total = streamed(with_tools.stream("What is the weather in Paris?"))
    assert sum(len(piece.tool_call_chunks) for piece in pieces) >= 1
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert total.invalid_tool_calls == []
    assert total.tool_calls == whole.tool_calls


def test_two_tools_are_called_in_parallel_and_a_tool_result_gets_a_text_answer(chat: ChatOpenAI) -> None:
    with_tools = chat.bind_tools([GetWeather, GetTime])
    question = HumanMessage("What is the weather and the time in Paris?")
    asked = with_tools.invoke([question])
    assert [call["name"] for call in asked.tool_calls] == ["GetWeather", "GetTime"]
    assert len({call["id"] for call in asked.tool_calls}) == 2
    GetWeather.model_validate(asked.tool_calls[0]["args"])
    GetTime.model_validate(asked.tool_calls[1]["args"])
    results = [
        ToolMessage(content=f"result of {call['name']}", tool_call_id=call["id"] or "") for call in asked.tool_calls
    ]
    answer = with_tools.invoke([question, asked, *results])
    assert answer.tool_calls == []
    assert answer.response_metadata["finish_reason"] == "stop"
    assert isinstance(answer.content, str)
    assert len(answer.content.split()) == REPLY_WORDS


def test_structured_output_parses_into_the_pydantic_model(chat: ChatOpenAI) -> None:
    for method in ("json_schema", "function_calling"):
        weather = chat.with_structured_output(GetWeather, method=method).invoke("The weather in Paris, please")
        assert isinstance(weather, GetWeather), method
        assert weather.city
        assert weather.unit in ("celsius", "fahrenheit")


def test_responses_api_invoke_answers_with_text_and_usage(responses_chat: ChatOpenAI) -> None:
    answer = responses_chat.invoke([HumanMessage(PROMPT)])
    assert isinstance(answer, AIMessage)
    assert len(answer.text.split()) == REPLY_WORDS
    assert answer.response_metadata["id"].startswith("resp_")  # a Response, not a chat completion
    assert answer.response_metadata["status"] == "completed"
    assert answer.response_metadata["model_name"] == DEMO_MODEL
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == REPLY_WORDS
    assert answer.usage_metadata["input_tokens"] > 0


def test_responses_api_stream_comes_in_pieces_that_join_to_the_invoked_text(responses_chat: ChatOpenAI) -> None:
    whole = responses_chat.invoke(PROMPT)
    pieces, total = streamed(responses_chat.stream(PROMPT))
    texts = [piece.text for piece in pieces if piece.text]
    assert len(texts) >= REPLY_WORDS  # word by word, not one block at the end
    assert "".join(texts) == whole.text
    assert total.text == whole.text
    assert total.response_metadata["id"].startswith("resp_")
    assert total.response_metadata["status"] == "completed"


def test_responses_api_bound_tool_gives_a_tool_call_and_its_result_an_answer(responses_chat: ChatOpenAI) -> None:
    with_tools = responses_chat.bind_tools([GetWeather])
    question = HumanMessage("What is the weather in Paris?")
    asked = with_tools.invoke([question])
    assert asked.invalid_tool_calls == []
    [call] = asked.tool_calls
    assert call["name"] == "GetWeather"
    assert call["id"] is not None
    arguments = GetWeather.model_validate(call["args"])  # the arguments satisfy the tool's schema
    assert arguments.city
    answer = with_tools.invoke([question, asked, ToolMessage(content="Sunny, 21 C", tool_call_id=call["id"])])
    assert answer.tool_calls == []
    assert len(answer.text.split()) == REPLY_WORDS


def test_responses_api_streamed_tool_call_merges_into_the_invoked_one(responses_chat: ChatOpenAI) -> None:
    with_tools = responses_chat.bind_tools([GetWeather])
    whole = with_tools.invoke("What is the weather in Paris?")
    pieces, total = streamed(with_tools.stream("What is the weather in Paris?"))
    assert sum(len(piece.tool_call_chunks) for piece in pieces) >= 1
    assert total.invalid_tool_calls == []
    assert [(call["name"], call["args"]) for call in total.tool_calls] == [
        (call["name"], call["args"]) for call in whole.tool_calls
    ]


def test_embed_documents_and_query_give_the_vectors_the_openai_sdk_gets(
    stack: Stack, api_key: str, sent_bodies: list[dict[str, Any]], recording_client: httpx.Client
) -> None:
    embeddings = embeddings_of(stack, api_key, check_embedding_ctx_length=False, http_client=recording_client)
    vectors = embeddings.embed_documents(DOCUMENTS)
    query = embeddings.embed_query(DOCUMENTS[1])
    assert [body["input"] for body in sent_bodies] == [DOCUMENTS, [DOCUMENTS[1]]]  # text, as strings
    assert len(vectors) == len(DOCUMENTS)
    for vector in vectors:
        assert len(vector) == EMBEDDING_DIMENSIONS
        assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-4)
    assert query == vectors[1]
    with openai.OpenAI(base_url=stack.config.api_base, api_key=api_key, max_retries=0) as sdk:
        floats = sdk.embeddings.create(model=DEMO_EMBEDDING_MODEL, input=DOCUMENTS, encoding_format="float")
    for vector, expected in zip(vectors, floats.data, strict=True):
        assert vector == pytest.approx(expected.embedding, abs=1e-6)


def test_dimensions_are_passed_to_the_model(stack: Stack, api_key: str) -> None:
    embeddings = embeddings_of(stack, api_key, check_embedding_ctx_length=False, dimensions=8)
    [vector] = embeddings.embed_documents(DOCUMENTS[:1])
    assert len(vector) == 8
    assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-4)


def test_retrieval_finds_the_document_a_query_repeats(stack: Stack, api_key: str) -> None:
    embeddings = embeddings_of(stack, api_key, check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(DOCUMENTS)
    for index, document in enumerate(DOCUMENTS):
        query = embeddings.embed_query(document)
        assert nearest(query, vectors) == index
        assert cosine(query, vectors[index]) == pytest.approx(1.0, abs=1e-6)
    other = embeddings.embed_query("Something else entirely")
    assert max(cosine(other, vector) for vector in vectors) < 0.99


def test_default_tokenizing_embeddings_send_token_arrays_and_still_retrieve(
    stack: Stack,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    sent_bodies: list[dict[str, Any]],
    recording_client: httpx.Client,
) -> None:
    """What a user with internet access gets from the defaults (``check_embedding_ctx_length=True``):
    LangChain tokenizes each text and sends token ids. tiktoken's real encoding cannot be downloaded here, so
    it gets a byte-level one (every byte a token) built in memory; the requests are what they would be."""
    byte_level = tiktoken.Encoding(
        name="byte_level", pat_str=r"\S+|\s+", mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={}
    )
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda model_name: byte_level)
    embeddings = embeddings_of(stack, api_key, http_client=recording_client)
    vectors = embeddings.embed_documents(DOCUMENTS)
    query = embeddings.embed_query(DOCUMENTS[2])
    assert [body["input"] for body in sent_bodies] == [
        [list(document.encode()) for document in DOCUMENTS],
        [list(DOCUMENTS[2].encode())],
    ]
    assert [len(vector) for vector in vectors] == [EMBEDDING_DIMENSIONS] * len(DOCUMENTS)
    assert nearest(query, vectors) == 2
    assert cosine(query, vectors[2]) == pytest.approx(1.0, abs=1e-6)
