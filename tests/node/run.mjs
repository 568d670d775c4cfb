// Run one Vercel AI SDK call against refserver and print what the SDK made of it, as JSON.
//
//   node run.mjs <case>     case: generate | stream | generate-tools | stream-tools | agent
//
// Environment: REFSERVER_BASE_URL (…/v1), REFSERVER_PROMPT, optional REFSERVER_API_KEY,
// REFSERVER_MODEL, REFSERVER_TOOL_RESULT (what the agent's tool returns) and
// REFSERVER_API: "chat" (the default: @ai-sdk/openai-compatible, configured as OpenCode
// configures it) or "responses" (@ai-sdk/openai's Responses API model, as it is by default;
// REFSERVER_REASONING_SUMMARY sets its reasoningSummary option, on a model it is told
// reasons: it knows only OpenAI's by name). The SDK's warnings are in the output, not logged.
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const provider = createOpenAICompatible({
  name: "refserver",
  baseURL: process.env.REFSERVER_BASE_URL,
  apiKey: process.env.REFSERVER_API_KEY,
  includeUsage: true,
});
const modelId = process.env.REFSERVER_MODEL ?? "default_model";
const model =
  process.env.REFSERVER_API === "responses"
    ? createOpenAI({ baseURL: process.env.REFSERVER_BASE_URL, apiKey: process.env.REFSERVER_API_KEY }).responses(modelId)
    : provider(modelId);
const prompt = process.env.REFSERVER_PROMPT;
const reasoningSummary = process.env.REFSERVER_REASONING_SUMMARY;
const providerOptions = reasoningSummary
  ? { openai: { reasoningSummary, forceReasoning: true } }
  : undefined;
globalThis.AI_SDK_LOG_WARNINGS = false;

const readFile = (execute) =>
  tool({
    description: "Read a file",
    inputSchema: z.object({ path: z.string(), limit: z.number().int().optional() }),
    ...(execute ? { execute } : {}),
  });

function summary(result) {
  return {
    text: result.text,
    reasoningText: result.reasoningText ?? null,
    toolCalls: result.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
    finishReason: result.finishReason,
    usage: result.usage,
    warnings: result.warnings ?? [],
  };
}

async function streamed(options) {
  const result = streamText({ ...options, onError: ({ error }) => { throw error; } });
  const parts = [];
  for await (const part of result.fullStream) {
    if (part.type === "error") throw part.error;
    parts.push(part.type);
  }
  return {
    text: await result.text,
    reasoningText: (await result.reasoningText) ?? null,
    toolCalls: (await result.toolCalls).map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
    finishReason: await result.finishReason,
    usage: await result.usage,
    warnings: (await result.warnings) ?? [],
    textDeltas: parts.filter((type) => type === "text-delta").length,
  };
}

const cases = {
  generate: async () =>
    summary(await generateText({ model, prompt, maxOutputTokens: 100, providerOptions })),
  stream: () => streamed({ model, prompt, maxOutputTokens: 100, providerOptions }),
  "generate-tools": async () =>
    summary(await generateText({ model, prompt, tools: { read_file: readFile() } })),
  "stream-tools": () => streamed({ model, prompt, tools: { read_file: readFile() } }),
  agent: async () => {
    const execute = async () => process.env.REFSERVER_TOOL_RESULT;
    const result = await generateText({
      model,
      prompt,
      tools: { read_file: readFile(execute) },
      stopWhen: stepCountIs(3),
    });
    return { ...summary(result), steps: result.steps.length, totalUsage: result.totalUsage };
  },
};

const name = process.argv[2];
if (!(name in cases)) {
  console.error(`usage: node run.mjs <${Object.keys(cases).join(" | ")}>`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await cases[name]()));
} catch (error) {
  console.error(error?.stack ?? String(error));
  process.exit(1);
}
