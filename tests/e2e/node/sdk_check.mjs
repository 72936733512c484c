// The official `openai` npm SDK against a running stack, as a JavaScript user would call it.
//
//   node sdk_check.mjs <baseURL> <apiKey> <model> <embeddingModel>
//
// Prints one JSON object of what the SDK observed; tests/e2e/test_node_sdk.py asserts on it. Only the
// SDK's own API errors are caught, and only around the calls that are meant to fail: anything else
// crashes the script with a non-zero exit and a stack trace on stderr, which fails the test.

import OpenAI, { APIError } from "openai";
import { VERSION } from "openai/version";

const [baseURL, apiKey, model, embeddingModel] = process.argv.slice(2);
if (!baseURL || !apiKey || !model || !embeddingModel) {
  throw new Error("usage: node sdk_check.mjs <baseURL> <apiKey> <model> <embeddingModel>");
}

const MESSAGES = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Write a haiku about GPUs" },
];

const EMBEDDING_INPUTS = ["The quick brown fox", "jumps over the lazy dog"];
const PROMPT = "Once upon a time";
const TEXT_MAX_TOKENS = 5;

/** The `encoding_format` of every embeddings request as the SDK put it on the wire (its `fetch` is ours). */
const embeddingEncodingsSent = [];

async function recordingFetch(url, init) {
  if (new URL(url).pathname.endsWith("/embeddings")) {
    embeddingEncodingsSent.push(JSON.parse(init.body).encoding_format ?? null);
  }
  return fetch(url, init);
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000, fetch: recordingFetch });

/** The headers the gateway promises on every answer, as the SDK's `Response` exposes them. */
function gatewayHeaders(response) {
  return {
    status: response.status,
    content_type: response.headers.get("content-type"),
    hoster: response.headers.get("x-computeshare-hoster"),
    request_id: response.headers.get("x-request-id"),
  };
}

/** What a non-streaming `chat.completion` carries. */
function describeCompletion(completion) {
  const [choice] = completion.choices;
  return {
    id: completion.id,
    object: completion.object,
    model: completion.model,
    choices: completion.choices.length,
    role: choice.message.role,
    content: choice.message.content,
    finish_reason: choice.finish_reason,
    usage: completion.usage ?? null,
    sdk_request_id: completion._request_id ?? null,
  };
}

/** Reads a stream to its end with `for await`, as the SDK's README does. */
async function describeStream(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  const last = chunks.at(-1);
  return {
    count: chunks.length,
    ids: [...new Set(chunks.map((c) => c.id))],
    objects: [...new Set(chunks.map((c) => c.object))],
    models: [...new Set(chunks.map((c) => c.model))],
    content: withChoices.map((c) => c.choices[0].delta.content ?? "").join(""),
    first_role: withChoices[0]?.choices[0].delta.role ?? null,
    finish_reason: withChoices.at(-1)?.choices[0].finish_reason ?? null,
    finish_reasons_before_last: withChoices.slice(0, -1).filter((c) => c.choices[0].finish_reason != null).length,
    chunks_with_usage_before_last: chunks.slice(0, -1).filter((c) => c.usage != null).length,
    last_choices: last?.choices ?? null,
    last_usage: last?.usage ?? null,
  };
}

/** What a `CreateEmbeddingResponse` carries; the vectors as the SDK handed them over (decoded from base64). */
function describeEmbeddings(response) {
  return {
    object: response.object,
    model: response.model,
    indexes: response.data.map((d) => d.index),
    objects: [...new Set(response.data.map((d) => d.object))],
    is_array: response.data.map((d) => Array.isArray(d.embedding)),
    vectors: response.data.map((d) => Array.from(d.embedding)),
    usage: response.usage,
  };
}

/** What a non-streaming `text_completion` carries. */
function describeTextCompletion(completion) {
  return {
    id: completion.id,
    object: completion.object,
    model: completion.model,
    choices: completion.choices.length,
    text: completion.choices[0].text,
    finish_reason: completion.choices[0].finish_reason,
    usage: completion.usage ?? null,
  };
}

/** Reads a text completion stream to its end with `for await`. */
async function describeTextStream(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  const last = chunks.at(-1);
  return {
    count: chunks.length,
    ids: [...new Set(chunks.map((c) => c.id))],
    objects: [...new Set(chunks.map((c) => c.object))],
    models: [...new Set(chunks.map((c) => c.model))],
    pieces: withChoices.map((c) => c.choices[0].text),
    finish_reason: withChoices.at(-1)?.choices[0].finish_reason ?? null,
    finish_reasons_before_last: withChoices.slice(0, -1).filter((c) => c.choices[0].finish_reason != null).length,
    chunks_with_usage_before_last: chunks.slice(0, -1).filter((c) => c.usage != null).length,
    last_choices: last?.choices ?? null,
    last_usage: last?.usage ?? null,
  };
}

/**
 * The API error a call is meant to fail with, as the SDK raised it. A call that resolves is reported as
 * such (the test then fails on it); anything thrown that is not the SDK's `APIError` is re-thrown.
 */
async function apiErrorOf(call) {
  try {
    const value = await call();
    return { raised: false, value };
  } catch (error) {
    if (!(error instanceof APIError)) {
      throw error;
    }
    return {
      raised: true,
      class: error.constructor.name,
      is_api_error: error instanceof APIError,
      status: error.status ?? null,
      code: error.code ?? null,
      param: error.param ?? null,
      type: error.type ?? null,
      message: error.message,
      body: error.error ?? null,
    };
  }
}

const nonStream = await client.chat.completions.create({ model, messages: MESSAGES }).withResponse();
const truncated = await client.chat.completions.create({ model, messages: MESSAGES, max_tokens: 4 });

const streamed = await client.chat.completions.create({ model, messages: MESSAGES, stream: true }).withResponse();
const streamHeaders = gatewayHeaders(streamed.response);
const stream = await describeStream(streamed.data);

const streamWithUsage = await describeStream(
  await client.chat.completions.create({
    model,
    messages: MESSAGES,
    stream: true,
    stream_options: { include_usage: true },
  }),
);

const raw = await client.chat.completions.create({ model, messages: MESSAGES }).asResponse();
const rawBody = await raw.json();

const modelIds = [];
for await (const listed of client.models.list()) {
  modelIds.push(listed.id);
}
const retrieved = await client.models.retrieve(model);

// Embeddings as the SDK's README calls them: no encoding_format, so the SDK asks for base64 and decodes it.
const embeddingOfString = await client.embeddings.create({ model: embeddingModel, input: EMBEDDING_INPUTS[0] });
const embeddingsOfList = await client.embeddings.create({ model: embeddingModel, input: EMBEDDING_INPUTS });
const embeddingsAsFloats = await client.embeddings.create({
  model: embeddingModel,
  input: EMBEDDING_INPUTS,
  encoding_format: "float",
});

const textCompletion = await client.completions.create({ model, prompt: PROMPT, max_tokens: TEXT_MAX_TOKENS });
const textStream = await describeTextStream(
  await client.completions.create({
    model,
    prompt: PROMPT,
    max_tokens: TEXT_MAX_TOKENS,
    stream: true,
    stream_options: { include_usage: true },
  }),
);

const badKeyClient = new OpenAI({
  baseURL,
  apiKey: "ngk_this-key-was-never-issued-by-computeshare-000000000",
  maxRetries: 0,
  timeout: 30_000,
});

const report = {
  sdk_version: VERSION,
  node_version: process.version,
  non_stream: {
    ...describeCompletion(nonStream.data),
    headers: gatewayHeaders(nonStream.response),
    with_response_request_id: nonStream.request_id,
  },
  max_tokens_4: describeCompletion(truncated),
  stream: { ...stream, headers: streamHeaders },
  stream_with_usage: streamWithUsage,
  as_response: {
    ...gatewayHeaders(raw),
    body_id: rawBody.id,
    body_object: rawBody.object,
    body_has_cost: typeof rawBody.usage?.cost === "number",
  },
  embeddings: {
    inputs: EMBEDDING_INPUTS,
    of_string: describeEmbeddings(embeddingOfString),
    of_list: describeEmbeddings(embeddingsOfList),
    as_floats: describeEmbeddings(embeddingsAsFloats),
    encodings_sent: embeddingEncodingsSent,
  },
  text_completion: {
    prompt: PROMPT,
    max_tokens: TEXT_MAX_TOKENS,
    non_stream: describeTextCompletion(textCompletion),
    stream: textStream,
  },
  models: { list_ids: modelIds, retrieved_id: retrieved.id, retrieved_object: retrieved.object },
  errors: {
    unknown_model: await apiErrorOf(() =>
      client.chat.completions.create({ model: "no-such-model", messages: MESSAGES }),
    ),
    unknown_model_retrieve: await apiErrorOf(() => client.models.retrieve("no-such-model")),
    bad_key: await apiErrorOf(() => badKeyClient.chat.completions.create({ model, messages: MESSAGES })),
    temperature_3: await apiErrorOf(() =>
      client.chat.completions.create({ model, messages: MESSAGES, temperature: 3 }),
    ),
  },
};

process.stdout.write(`${JSON.stringify(report)}\n`);
