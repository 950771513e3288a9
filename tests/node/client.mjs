// The official openai npm package against batch-infer serve, as its own README uses it.
// Usage: node client.mjs BASE_URL API_KEY FILE.jsonl  (prints one JSON object of what it saw)
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, path] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const seen = {};

async function errorOf(call) {
  try {
    await call();
    return null;
  } catch (error) {
    return {
      classes: Object.entries({
        APIError: OpenAI.APIError,
        BadRequestError: OpenAI.BadRequestError,
        AuthenticationError: OpenAI.AuthenticationError,
        NotFoundError: OpenAI.NotFoundError,
        ConflictError: OpenAI.ConflictError,
      })
        .filter(([, kind]) => error instanceof kind)
        .map(([name]) => name),
      status: error.status,
      param: error.param ?? null,
      code: error.code ?? null,
    };
  }
}

const streamed = await client.files.create({ file: fs.createReadStream(path), purpose: "batch" });
const made = await client.files.create({
  file: await toFile(fs.readFileSync(path), "to-file.jsonl"),
  purpose: "batch",
});
seen.uploads = [streamed, made].map((f) => ({ id: f.id, filename: f.filename, bytes: f.bytes }));
seen.waited = (await client.files.waitForProcessing(streamed.id, { pollInterval: 100 })).status;
const batch = await client.batches.create({
  input_file_id: streamed.id,
  endpoint: "/v1/chat/completions",
  completion_window: "24h",
  metadata: { from: "node" },
});
seen.created = { id: batch.id, status: batch.status, metadata: batch.metadata };
seen.polled = (await client.batches.retrieve(batch.id)).status;
seen.content = await (await client.files.content(made.id)).text();
seen.listed = [];
for await (const file of client.files.list({ limit: 1 })) seen.listed.push(file.id);
seen.batches = [];
for await (const b of client.batches.list({ limit: 1 })) seen.batches.push(b.id);
seen.cancelled = (await client.batches.cancel(batch.id)).status;
seen.in_use = await errorOf(() => client.files.delete(streamed.id));
seen.deleted = (await client.files.delete(made.id)).deleted;
seen.gone = await errorOf(() => client.files.retrieve(made.id));
seen.bad_endpoint = await errorOf(() =>
  client.batches.create({ input_file_id: streamed.id, endpoint: "/v1/nope", completion_window: "24h" }),
);
const stranger = new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 });
seen.wrong_key = await errorOf(() => stranger.files.list());
console.log(JSON.stringify(seen));
