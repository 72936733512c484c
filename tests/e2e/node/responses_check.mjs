// The Responses API (`/v1/responses`) against a running stack through two JavaScript clients: the official
// `openai` npm SDK (`client.responses.*`) and the Vercel AI SDK (`ai` with `@ai-sdk/openai`, whose
// `createOpenAI(...)(model)` is a Responses model).
//
//   node responses_check.mjs <baseURL> <apiKey> <model>
//
// Prints one JSON object of what the SDKs observed; tests/e2e/test_node_responses.py asserts on it. Only the
// SDK's own API errors are caught, and only around the calls that are meant to fail: anything else crashes
// the script with a non-zero exit and a stack trace on stderr, which fails the test.

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import OpenAI, { APIError } from "openai";
import { z } from "zod";

const [baseURL, apiKey, model] = process.argv.slice(2);
if (!baseURL || !apiKey || !model) {
  throw new Error("usage: node responses_check.mjs <baseURL> <apiKey> <model>");
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000 });

/** What a `response` object carries, as the SDK handed it over (`output_text` is the SDK's own). */
function describeResponse(response) {
  return {
    id: response.id,
    object: response.object,
    model: response.model,
    status: response.status,
    output_types: response.output.map((item) => item.type),
    output_text: response.output_text,
    previous_response_id: response.previous_response_id ?? null,
    usage: response.usage ?? null,
  };
}

/** The API error a call is meant to fail with, as the SDK raised it; anything else is re-thrown. */
async function apiErrorOf(call) {
  try {
    await call();
    return { raised: false };
  } catch (error) {
    if (!(error instanceof APIError)) {
      throw error;
    }
    return { raised: true, class: error.constructor.name, status: error.status ?? null, code: error.code ?? null };
  }
}

/** Every item of a response's `input_items`, through the SDK's auto-paging iterator. */
async function inputItemsOf(responseId) {
  const items = [];
  for await (const item of client.responses.inputItems.list(responseId)) {
    items.push({ type: item.type, role: item.role ?? null });
  }
  return items;
}

async function openaiSdk() {
  const ofString = await client.responses.create({ model, input: "Write a haiku about GPUs", instructions: "Be terse." });
  const ofItems = await client.responses.create({
    model,
    input: [
      { role: "developer", content: "You are terse." },
      { role: "user", content: [{ type: "input_text", text: "Write a haiku about GPUs" }] },
    ],
  });

  // `responses.stream` runs the SDK's own event parser and accumulator; its final response is the snapshot.
  const events = [];
  let streamedText = "";
  const stream = client.responses.stream({ model, input: [{ role: "user", content: "stream me" }] });
  for await (const event of stream) {
    events.push(event.type);
    if (event.type === "response.output_text.delta") {
      streamedText += event.delta;
    }
  }
  const final = await stream.finalResponse();

  // `create({ stream: true })`: the raw event stream, read to `response.completed`.
  const rawEvents = [];
  let completed = null;
  for await (const event of await client.responses.create({ model, input: "stream me raw", stream: true })) {
    rawEvents.push(event.type);
    if (event.type === "response.completed") {
      completed = event.response;
    }
  }

  const retrieved = await client.responses.retrieve(ofString.id);
  const second = await client.responses.create({ model, input: "And another?", previous_response_id: ofString.id });
  const secondItems = await inputItemsOf(second.id);

  const doomed = await client.responses.create({ model, input: "Delete me" });
  const deleted = await client.responses.delete(doomed.id);
  return {
    of_string: describeResponse(ofString),
    of_string_input_items: await inputItemsOf(ofString.id),
    of_items: describeResponse(ofItems),
    of_items_input_items: await inputItemsOf(ofItems.id),
    stream: {
      events,
      delta_text: streamedText,
      final: describeResponse(final),
      stored_text: (await client.responses.retrieve(final.id)).output_text,
    },
    raw_stream: {
      events: rawEvents,
      completed_id: completed?.id ?? null,
      completed_status: completed?.status ?? null,
      completed_output_types: completed?.output.map((item) => item.type) ?? null,
    },
    retrieved: describeResponse(retrieved),
    previous: { ...describeResponse(second), input_items: secondItems },
    deleted: {
      returned: deleted ?? null,
      retrieve_after: await apiErrorOf(() => client.responses.retrieve(doomed.id)),
      delete_again: await apiErrorOf(() => client.responses.delete(doomed.id)),
    },
  };
}

/** Every request the AI SDK made: method, path and the types of its `input` items; its `fetch` is this one. */
const aiRequests = [];

async function recordingFetch(url, init) {
  const body = typeof init?.body === "string" ? JSON.parse(init.body) : {};
  aiRequests.push({
    method: init?.method ?? "GET",
    path: new URL(url).pathname,
    stream: body.stream ?? false,
    input_types: Array.isArray(body.input) ? body.input.map((item) => item.type ?? `message:${item.role}`) : null,
    tools: (body.tools ?? []).map((t) => t.name ?? t.type),
  });
  return fetch(url, init);
}

/** The weather tool both AI SDK checks offer; `calls` records every input it ran with. */
function weatherTool(calls, inputSchema) {
  return tool({
    description: "The current weather in a city.",
    inputSchema,
    execute: async (input) => {
      calls.push(input);
      return { city: input.city, forecast: "sunny", celsius: 21 };
    },
  });
}

/** What a finished `generateText` or `streamText` run carries, step by step. */
function describeSteps(steps) {
  return steps.map((step) => ({
    finish_reason: step.finishReason,
    tool_calls: step.toolCalls.map((call) => call.toolName),
    tool_results: step.toolResults.map((result) => result.toolName),
    text: step.text,
    response_id: step.providerMetadata?.openai?.responseId ?? step.response?.id ?? null,
  }));
}

async function vercelAiSdk() {
  const provider = createOpenAI({ baseURL, apiKey, fetch: recordingFetch });
  const languageModel = provider(model);

  const plain = await generateText({ model: languageModel, prompt: "Write a haiku about GPUs", maxRetries: 0 });

  const streamedPlain = streamText({ model: languageModel, prompt: "Stream a haiku about GPUs", maxRetries: 0 });
  const pieces = [];
  for await (const piece of streamedPlain.textStream) {
    pieces.push(piece);
  }

  const zodCalls = [];
  const withTool = await generateText({
    model: languageModel,
    prompt: "What is the weather in Paris?",
    tools: { weather: weatherTool(zodCalls, z.object({ city: z.string().describe("The city") })) },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
  });

  const schemaCalls = [];
  const streamedTool = streamText({
    model: languageModel,
    prompt: "What is the weather in Oslo?",
    tools: {
      weather: weatherTool(
        schemaCalls,
        jsonSchema({
          type: "object",
          properties: { city: { type: "string", description: "The city" } },
          required: ["city"],
          additionalProperties: false,
        }),
      ),
    },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
  });
  const streamedToolPieces = [];
  for await (const piece of streamedTool.textStream) {
    streamedToolPieces.push(piece);
  }

  return {
    provider: languageModel.provider,
    requests: aiRequests,
    generate_text: { text: plain.text, finish_reason: plain.finishReason, usage: plain.usage },
    stream_text: {
      pieces: pieces.length,
      text: pieces.join(""),
      final_text: await streamedPlain.text,
      finish_reason: await streamedPlain.finishReason,
    },
    generate_text_tool: {
      calls: zodCalls,
      text: withTool.text,
      finish_reason: withTool.finishReason,
      steps: describeSteps(withTool.steps),
    },
    stream_text_tool: {
      calls: schemaCalls,
      text: streamedToolPieces.join(""),
      final_text: await streamedTool.text,
      finish_reason: await streamedTool.finishReason,
      steps: describeSteps(await streamedTool.steps),
    },
  };
}

const report = {
  versions: {
    node: process.version,
    openai: (await import("openai/version")).VERSION,
  },
  openai_sdk: await openaiSdk(),
  ai_sdk: await vercelAiSdk(),
};

process.stdout.write(`${JSON.stringify(report)}\n`);
