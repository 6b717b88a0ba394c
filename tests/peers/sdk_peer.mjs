// sdk_peer.mjs — the official A2A JS SDK (@a2a-js/sdk, pinned by examples/js-agent's
// lockfile) as switchboard's caller, for tests/integration/test_notify_sdk.py.
//
//   node tests/peers/sdk_peer.mjs notify  v03|v10 SB_A2A_URL TOKEN
//       Starts an HTTP receiver on 127.0.0.1, sends one message through the SDK's
//       JSON-RPC transport (v0.3: LegacyJsonRpcTransport, v1.0: JsonRpcTransport) with a
//       push-notification config pointing at the receiver (token "sdk-token", Bearer
//       credentials "sdk-cred"), prints "TASK <task json>", then one "NOTIFY <json>" line
//       per notification received ({"headers","body","state"}; v1.0 bodies are parsed with
//       the SDK's StreamResponse.fromJSON, v0.3 bodies must be a Task), and exits after a
//       final state (completed, failed, canceled) or 30 s.
//   node tests/peers/sdk_peer.mjs subscribe v03|v10 SB_A2A_URL TOKEN TASK_ID
//       Resubscribes to the task through the SDK (tasks/resubscribe, SubscribeToTask) and
//       prints one "EVENT <json>" line per event the SDK yields ({"state" as the SDK names
//       it, "kind" the StreamResponse case, "id", "event"}), then "END" when the stream
//       ends.
//
// Every line is flushed as it is written, so the test reacts to each one in turn.
import { createRequire } from "node:module";
import http from "node:http";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const agentDir = path.resolve(here, "../../examples/js-agent");
const requireFromAgent = createRequire(path.join(agentDir, "package.json"));
const load = async (spec) => import(pathToFileURL(requireFromAgent.resolve(spec)).href);

const sdk = await load("@a2a-js/sdk");
const client = await load("@a2a-js/sdk/client");
const compat = await load("@a2a-js/sdk/compat/v0_3/client");

const [mode, version, url, token, taskId] = process.argv.slice(2);
const FINAL = new Set(["completed", "failed", "canceled", "TASK_STATE_COMPLETED",
  "TASK_STATE_FAILED", "TASK_STATE_CANCELED"]);

function out(tag, obj) {
  process.stdout.write(`${tag} ${JSON.stringify(obj)}\n`);
}

function authedFetch(input, init = {}) {
  const headers = new Headers(init.headers || {});
  headers.set("Authorization", `Bearer ${token}`);
  return fetch(input, { ...init, headers });
}

async function transport() {
  if (version === "v03")
    return new compat.LegacyJsonRpcTransport({ endpoint: url, fetchImpl: authedFetch });
  const factory = new client.JsonRpcTransportFactory({ fetchImpl: authedFetch });
  return factory.create(url, undefined);
}

function jsonSafe(x) {
  return JSON.parse(JSON.stringify(x, (k, v) => (typeof v === "bigint" ? String(v) : v)));
}

async function notify() {
  let done;
  const finished = new Promise((r) => (done = r));
  const server = http.createServer((req, res) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => {
      res.writeHead(200).end();
      const raw = JSON.parse(data);
      let state;
      if (version === "v10") {
        const sr = sdk.StreamResponse.fromJSON(raw);
        if (sr.payload?.$case !== "task") throw new Error(`not a task payload: ${data}`);
        state = sdk.taskStateToJSON(sr.payload.value.status.state);
      } else {
        if (raw.kind !== "task" || !raw.id || !raw.status) throw new Error(`not a Task: ${data}`);
        state = raw.status.state;
      }
      out("NOTIFY", { headers: req.headers, body: raw, state });
      if (FINAL.has(state)) done();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const hook = `http://127.0.0.1:${server.address().port}/a2a-hook`;
  const t = await transport();
  const params = sdk.SendMessageRequest.fromJSON({
    message: { messageId: `sdk-${Date.now()}`, role: "ROLE_USER", parts: [{ text: "hello from the SDK" }] },
    configuration: {
      taskPushNotificationConfig: {
        url: hook, token: "sdk-token",
        authentication: { scheme: "Bearer", credentials: "sdk-cred" },
      },
    },
  });
  const result = await t.sendMessage(params);
  out("TASK", jsonSafe(result));
  const timer = setTimeout(() => done(), 30000);
  await finished;
  clearTimeout(timer);
  server.close();
}

async function subscribe() {
  const t = await transport();
  for await (const ev of t.resubscribeTask(sdk.SubscribeToTaskRequest.fromJSON({ id: taskId }))) {
    const v = ev?.payload?.value;
    const st = v?.status?.state;
    out("EVENT", { state: st === undefined ? null : sdk.taskStateToJSON(st),
                   kind: ev?.payload?.$case ?? null, id: v?.id ?? v?.taskId ?? null,
                   event: jsonSafe(ev) });
  }
  process.stdout.write("END\n");
}

try {
  if (mode === "notify") await notify();
  else if (mode === "subscribe") await subscribe();
  else throw new Error(`unknown mode ${mode}`);
  process.exit(0);
} catch (e) {
  process.stderr.write(`sdk_peer: ${e?.stack || e}\n`);
  process.exit(1);
}
