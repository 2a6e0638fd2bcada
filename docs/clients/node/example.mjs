// clipserve from Node.js: Info, Embed, Upsert (with a payload), Query (with a filter).
//
//   cd docs/clients/node && npm ci
//   node example.mjs [HOST:PORT]          (default 127.0.0.1:50051; CLIPSERVE_API_KEY if required)
//
// It prints what it does, then one line `RESULT {json}` that tests/test_deploy.py reads.
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO = process.env.CLIPSERVE_PROTO ?? path.join(here, "../../../proto/v1/clipserve.proto");
const address = process.argv[2] ?? process.env.CLIPSERVE_ADDRESS ?? "127.0.0.1:50051";

// keepCase: field names as in the .proto (snake_case). longs: String makes 64-bit integers
// (uint64/int64: Limits.max_image_bytes, CountResponse.count, ...) arrive as decimal strings;
// without it they arrive as Long objects ({low, high, unsigned}), never as JS numbers, because
// a JS number cannot hold every 64-bit value. oneofs: true adds a virtual field naming the set
// member (e.g. content.kind === "text").
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { ClipServe } = grpc.loadPackageDefinition(definition).clipserve.v1;

// google.protobuf.Struct is NOT a plain object on the wire: it is {fields: {key: Value}} where
// a Value is {stringValue | numberValue | boolValue | nullValue | structValue | listValue}.
// proto-loader does not convert for you: a plain object such as {source: "demo"} is silently
// encoded as an EMPTY Struct (its keys are unknown fields). Always convert:
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "number") return { numberValue: v };
  if (typeof v === "boolean") return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}
export function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}
function fromValue(v) {
  switch (v.kind) {
    case "stringValue":
    case "numberValue":
    case "boolValue":
      return v[v.kind];
    case "structValue":
      return fromStruct(v.structValue);
    case "listValue":
      return (v.listValue.values ?? []).map(fromValue);
    default:
      return null;
  }
}
export function fromStruct(s) {
  return Object.fromEntries(Object.entries(s?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

// Unary calls as promises, with the API key as metadata `x-api-key` and a deadline.
function call(client, method, request, timeoutMs = 30_000) {
  const metadata = new grpc.Metadata();
  if (process.env.CLIPSERVE_API_KEY) metadata.set("x-api-key", process.env.CLIPSERVE_API_KEY);
  const deadline = new Date(Date.now() + timeoutMs);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, reply) => {
      if (err) {
        // err.code is a grpc.status number, err.details the server's message.
        reject(new Error(`${method}: ${grpc.status[err.code]} ${err.details}`));
      } else {
        resolve(reply);
      }
    });
  });
}

async function main() {
  const client = new ClipServe(address, grpc.credentials.createInsecure());
  // With TLS: grpc.credentials.createSsl(fs.readFileSync("ca.pem")).
  await new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + 30_000), (e) => (e ? reject(e) : resolve())),
  );

  const info = await call(client, "Info", {});
  // uint64 limits arrive as strings (longs: String); uint32 ones as numbers.
  console.log(`model ${info.model_name} dim ${info.dim}; max_image_bytes`,
    JSON.stringify(info.limits.max_image_bytes), `(${typeof info.limits.max_image_bytes})`);

  const embed = await call(client, "Embed", {
    inputs: [{ text: "a small red circle" }, { text: "a large blue square" }],
  });
  const vector = embed.embeddings[0].values;
  const norm = Math.sqrt(vector.reduce((s, x) => s + x * x, 0));
  console.log(`embedded ${embed.embeddings.length} texts, dim ${embed.dim}, |v| = ${norm.toFixed(4)}`);

  const collection = process.env.CLIPSERVE_COLLECTION ?? "node_example";
  const payload = { source: "node-example", rank: 7, tags: ["red", "circle"] };
  const upsert = await call(client, "Upsert", {
    collection,
    items: [
      { content: { text: "a small red circle" }, payload: toStruct(payload) },
      { content: { text: "a large blue square" }, payload: toStruct({ source: "node-example", rank: 8 }) },
    ],
  });
  console.log(`upserted ids ${upsert.ids.join(", ")} into ${upsert.collection}`);

  const query = await call(client, "Query", {
    collection,
    text: "a small red circle",
    top_k: 2,
    filter: { must: [{ key: "source", keyword: "node-example" }] },
  });
  const hits = query.hits.map((h) => ({ id: h.id, score: h.score, payload: fromStruct(h.payload) }));
  for (const h of hits) console.log(`hit ${h.id} score ${h.score.toFixed(4)} payload ${JSON.stringify(h.payload)}`);

  // The pitfall, shown: a plain object where a Struct is expected is stored as an EMPTY payload.
  const wrong = await call(client, "Upsert", {
    collection,
    items: [{ content: { text: "a plain object payload" }, payload: { source: "plain-object" } }],
  });
  const found = await call(client, "Query", { collection, text: "a plain object payload", top_k: 3 });
  const stored = found.hits.find((h) => h.id === wrong.ids[0]);
  const plainObjectPayload = stored ? fromStruct(stored.payload) : null;
  console.log(`plain object sent as payload -> stored payload ${JSON.stringify(plainObjectPayload)}`);

  client.close();
  console.log("RESULT " + JSON.stringify({
    model_version: info.model_version,
    dim: embed.dim,
    n_embeddings: embed.embeddings.length,
    norm,
    max_image_bytes: info.limits.max_image_bytes,
    ids: upsert.ids,
    hits,
    plain_object_payload: plainObjectPayload,
  }));
}

main().catch((e) => {
  console.error(e.message ?? e);
  process.exit(1);
});
