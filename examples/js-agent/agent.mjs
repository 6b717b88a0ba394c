// An A2A agent for switchboard, built with the official A2A JS SDK (@a2a-js/sdk).
//
// What every push-mode agent behind switchboard has to do, and nothing else:
//   1. register its endpoint (POST /registry/register) with its workspace token, and keep
//      the inbound_secret switchboard answers with;
//   2. check `Authorization: Bearer <inbound_secret>` on every push, so only switchboard
//      can make it work (anyone else gets 401);
//   3. heartbeat (POST /registry/heartbeat) well within its lease, reporting
//      `active_tasks` so switchboard's recovery drain knows its spare capacity;
//   4. register again when a heartbeat answers 404 (the registration was deleted, or the
//      Redis behind switchboard lost it) — with a fresh inbound secret in that case.
//
// The A2A side is the SDK's: DefaultRequestHandler + the Express JSON-RPC handler with
// the v0.3 compatibility layer, so both `message/send` (A2A v0.3) and `SendMessage`
// (v1.0, `A2A-Version: 1.0`) work. The skill is an echo; put your own in execute().
//
// Configuration (environment):
//   SWITCHBOARD_URL     switchboard's base URL (default http://127.0.0.1:8080)
//   SWITCHBOARD_TOKEN   the workspace token (minted with POST /admin/workspaces/{ws}/tokens)
//   SWITCHBOARD_TOKEN_FILE  or a file holding it (a container secret)
//   WORKSPACE_ID        the workspace this agent serves (required)
//   AGENT_HOST          address to listen on (default 127.0.0.1)
//   AGENT_PORT          port to listen on (default 9001; 0 picks a free one)
//   AGENT_PUBLIC_URL    the URL switchboard pushes to (default http://AGENT_HOST:PORT/)
//   LEASE_S             registration lease (default 30); heartbeats every LEASE_S/3
//   MAX_CONCURRENCY     pushes handled at once (default 4)
//   ECHO_DELAY_MS       think this long before answering (default 0), to see active_tasks
//
// Prints `READY <port>` on stdout once registered; logs one line per event on stderr.
// Stops on SIGTERM/SIGINT (it does not delete its registration: the lease lapses, and
// switchboard queues messages for it meanwhile with reason `lease_expired`).

import crypto from 'node:crypto';
import fs from 'node:fs';
import express from 'express';

import { AGENT_CARD_PATH, A2A_PROTOCOL_VERSION, Role } from '@a2a-js/sdk';
import { AgentEvent, DefaultRequestHandler, InMemoryTaskStore } from '@a2a-js/sdk/server';
import { agentCardHandler, jsonRpcHandler, UserBuilder } from '@a2a-js/sdk/server/express';

const env = process.env;
const SWITCHBOARD_URL = (env.SWITCHBOARD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const TOKEN = env.SWITCHBOARD_TOKEN_FILE
  ? readToken(env.SWITCHBOARD_TOKEN_FILE)
  : env.SWITCHBOARD_TOKEN || '';
const WORKSPACE_ID = env.WORKSPACE_ID || '';
const HOST = env.AGENT_HOST || '127.0.0.1';
const PORT = Number(env.AGENT_PORT ?? 9001);
const LEASE_S = Number(env.LEASE_S || 30);
const MAX_CONCURRENCY = Number(env.MAX_CONCURRENCY || 4);
const ECHO_DELAY_MS = Number(env.ECHO_DELAY_MS || 0);

function readToken(path) {
  // A container may start before its secret is written: wait for it a little.
  for (let i = 0; i < 60; i++) {
    try {
      const t = fs.readFileSync(path, 'utf8').trim();
      if (t) return t;
    } catch {
      // not there yet
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
  }
  return '';
}

function log(event, fields = {}) {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), event, ...fields }) + '\n');
}

if (!TOKEN || !WORKSPACE_ID) {
  log('config_error', { message: 'SWITCHBOARD_TOKEN and WORKSPACE_ID are required' });
  process.exit(2);
}

// ---- state shared by the A2A side and the registration loop ---------------------------

let inboundSecret = null; // Buffer; null until registered
let activeTasks = 0;

// Constant-time comparison, so the secret cannot be guessed byte by byte from timings.
function secretMatches(header) {
  if (inboundSecret === null || typeof header !== 'string' || !header.startsWith('Bearer ')) {
    return false;
  }
  const given = Buffer.from(header.slice('Bearer '.length).trim());
  return given.length === inboundSecret.length && crypto.timingSafeEqual(given, inboundSecret);
}

// ---- the agent's skill ----------------------------------------------------------------

function textOf(message) {
  const part = (message.parts || []).find((p) => p.content?.$case === 'text');
  return part ? part.content.value : '';
}

const executor = {
  async execute(ctx, bus) {
    activeTasks++;
    try {
      const text = textOf(ctx.userMessage);
      if (ECHO_DELAY_MS > 0) await new Promise((r) => setTimeout(r, ECHO_DELAY_MS));
      bus.publish(
        AgentEvent.message({
          messageId: crypto.randomUUID(),
          contextId: ctx.contextId,
          taskId: '',
          role: Role.ROLE_AGENT,
          parts: [{ content: { $case: 'text', value: `echo: ${text}` }, metadata: undefined, filename: '', mediaType: 'text/plain' }],
          metadata: undefined,
          extensions: [],
          referenceTaskIds: [],
        }),
      );
      bus.finished();
    } finally {
      activeTasks--;
    }
  },
  async cancelTask() {
    // Every answer is immediate: there is never a running task to cancel.
  },
};

// ---- HTTP: agent card (public) and JSON-RPC (switchboard only) ------------------------

function agentCard(publicUrl) {
  return {
    name: `echo agent for ${WORKSPACE_ID}`,
    description: 'Example agent behind switchboard: answers every message with an echo.',
    // One JSON-RPC endpoint for both protocol versions: switchboard passes A2A-Version
    // through, and the SDK's compat layer answers v0.3 requests (no A2A-Version header).
    supportedInterfaces: [
      { url: publicUrl, protocolBinding: 'JSONRPC', tenant: '', protocolVersion: A2A_PROTOCOL_VERSION },
      { url: publicUrl, protocolBinding: 'JSONRPC', tenant: '', protocolVersion: '0.3' },
    ],
    provider: undefined,
    version: '1.0.0',
    capabilities: { streaming: false, pushNotifications: false, extensions: [], extendedAgentCard: false },
    securitySchemes: {},
    securityRequirements: [],
    defaultInputModes: ['text'],
    defaultOutputModes: ['text'],
    skills: [
      { id: 'echo', name: 'Echo', description: 'Repeats the text it is sent.', tags: ['example'], examples: ['hello'], inputModes: ['text'], outputModes: ['text'], securityRequirements: [] },
    ],
    documentationUrl: '',
    signatures: [],
  };
}

function startServer() {
  return new Promise((resolve, reject) => {
    const app = express();
    const server = app.listen(PORT, HOST);
    server.on('error', reject);
    server.on('listening', () => {
      const port = server.address().port;
      const publicUrl = env.AGENT_PUBLIC_URL || `http://${HOST}:${port}/`;
      const handler = new DefaultRequestHandler(agentCard(publicUrl), new InMemoryTaskStore(), executor);
      // The card is public: switchboard's registration probe fetches it without a secret.
      app.use(`/${AGENT_CARD_PATH}`, agentCardHandler({ agentCardProvider: handler, legacyCompat: { enabled: true } }));
      // Every other request must come from switchboard.
      app.use((req, res, next) => {
        if (secretMatches(req.get('authorization'))) return next();
        log('push_refused', { method: req.method, path: req.path, remote: req.socket.remoteAddress });
        res.status(401).json({ error: { code: 'unauthorized', message: 'missing or wrong inbound secret' } });
      });
      app.use((req, res, next) => {
        log('push', {
          message_id: req.get('x-switchboard-message-id'),
          source: req.get('x-switchboard-source'),
          kind: req.get('x-switchboard-kind'),
        });
        next();
      });
      app.use('/', jsonRpcHandler({ requestHandler: handler, userBuilder: UserBuilder.noAuthentication, legacyCompat: { enabled: true } }));
      resolve({ server, port, publicUrl });
    });
  });
}

// ---- registration and heartbeats ------------------------------------------------------

async function call(path, body) {
  const res = await fetch(SWITCHBOARD_URL + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON (a proxy's error page): reported by status below
  }
  return { status: res.status, json, retryAfter: Number(res.headers.get('retry-after') || 0) };
}

async function register(publicUrl) {
  const r = await call('/registry/register', {
    workspace_id: WORKSPACE_ID,
    url: publicUrl,
    delivery_mode: 'push',
    lease_s: LEASE_S,
    max_concurrency: MAX_CONCURRENCY,
  });
  if (r.status !== 200 || !r.json?.inbound_secret) {
    const err = new Error(`register answered ${r.status}: ${JSON.stringify(r.json)}`);
    err.status = r.status;
    err.retryAfter = r.retryAfter;
    throw err;
  }
  inboundSecret = Buffer.from(r.json.inbound_secret);
  log('registered', { workspace: WORKSPACE_ID, url: publicUrl, lease_expires_at: r.json.lease_expires_at, probe: r.json.probe });
}

// Registers until it works: 401/403/400 are configuration errors and end the process;
// anything else (switchboard restarting, 503 while its Redis is away) is retried.
async function registerUntilDone(publicUrl) {
  for (let delay = 1; ; delay = Math.min(delay * 2, 30)) {
    try {
      await register(publicUrl);
      return;
    } catch (e) {
      if ([400, 401, 403].includes(e.status)) {
        log('register_refused', { message: e.message });
        process.exit(1);
      }
      const wait = e.retryAfter || delay;
      log('register_failed', { message: e.message, retry_in_s: wait });
      await new Promise((r) => setTimeout(r, wait * 1000));
    }
  }
}

async function heartbeat(publicUrl) {
  let r;
  try {
    r = await call('/registry/heartbeat', { workspace_id: WORKSPACE_ID, active_tasks: activeTasks });
  } catch (e) {
    log('heartbeat_failed', { message: e.message });
    return;
  }
  if (r.status === 404) {
    // Not registered any more: register anew (the secret may be a new one).
    log('heartbeat_not_registered', { workspace: WORKSPACE_ID });
    await registerUntilDone(publicUrl);
  } else if (r.status !== 200) {
    log('heartbeat_failed', { status: r.status, body: r.json });
  }
}

async function main() {
  const { server, port, publicUrl } = await startServer();
  await registerUntilDone(publicUrl);
  process.stdout.write(`READY ${port}\n`);

  const everyMs = Math.max(1000, (LEASE_S * 1000) / 3);
  let beating = false;
  const timer = setInterval(async () => {
    if (beating) return; // one heartbeat at a time
    beating = true;
    try {
      await heartbeat(publicUrl);
    } finally {
      beating = false;
    }
  }, everyMs);

  const stop = (sig) => {
    log('stopping', { signal: sig });
    clearInterval(timer);
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((e) => {
  log('fatal', { message: String(e?.stack || e) });
  process.exit(1);
});
