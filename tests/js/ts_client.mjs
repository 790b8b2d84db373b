// A 2025-11-25 MCP client in TypeScript SDK terms, driven by a JSON plan; prints one JSON document.
//
//   TS_SDK_ROOT=.ci/node-cache/node_modules/@modelcontextprotocol/sdk node ts_client.mjs PLAN.json
//
// The plan (see tests/ts_client.py for the Python side):
//   connect     {"command", "args", "env", "cwd"} (stdio, the command is spawned) or {"url", "headers"}
//   capabilities  optional; default: sampling, elicitation (form and url), roots (listChanged)
//   answers     scripted answers to server->client requests. Each is one answer (used every time)
//               or a list (one per request, in order; an exhausted list answers a JSON-RPC error):
//                 "sampling":    {"text", "model"?}
//                 "elicitation": {"action": "accept"|"decline"|"cancel", "content"?}  (form mode)
//                 "elicitationUrl": like "elicitation", for URL mode (falls back to "elicitation")
//                 "roots":       [{"uri", "name"?}]
//   operations  run in order, each recorded in "results" as {"op", "ok", "result"|"error"}:
//                 initialize (what the handshake returned), ping, tools/list,
//                 tools/call {"name", "arguments", "progress"?: true, "meta"?, "resetTimeoutOnProgress"?},
//                 resources/list, resources/templates/list, resources/read|subscribe|unsubscribe {"uri"},
//                 prompts/list, prompts/get {"name", "arguments"}, completion/complete {"ref", "argument"},
//                 logging/setLevel {"level"}, roots/set {"roots"} (then notifications/roots/list_changed),
//                 request {"method", "params"} (anything else),
//                 wait {"method", "count", "timeoutMs"} (until that many notifications of a kind arrived)
//   timeoutMs   per request (default 30000)
//
// Output: {"initialize", "results", "notifications", "requests", "errors"} where "notifications" is
// every notification the server sent, in arrival order, and "requests" every server->client request
// with the answer given. Exit 0 when the plan ran (a failed operation is data), 1 when it could not.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const root = process.env.TS_SDK_ROOT;
if (!root) {
  process.stderr.write('ts_client: set TS_SDK_ROOT to the @modelcontextprotocol/sdk package directory\n');
  process.exit(2);
}
const sdk = (path) => import(pathToFileURL(join(root, 'dist', 'esm', path)).href);
const { Client } = await sdk('client/index.js');
const { StdioClientTransport } = await sdk('client/stdio.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
const types = await sdk('types.js');

const plan = JSON.parse(await readFile(process.argv[2], 'utf8'));
const timeout = plan.timeoutMs ?? 30000;
const out = { initialize: null, results: [], notifications: [], requests: [], errors: [] };
const waiters = [];

function count(method) {
  return out.notifications.filter((n) => n.method === method).length;
}

function notified(notification) {
  out.notifications.push({ method: notification.method, params: notification.params ?? null });
  for (const waiter of [...waiters]) {
    if (count(waiter.method) >= waiter.count) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve();
    }
  }
}

function waitFor(method, wanted, ms) {
  if (count(method) >= wanted) return Promise.resolve(true);
  return new Promise((resolve) => {
    const waiter = { method, count: wanted, resolve: () => { clearTimeout(timer); resolve(true); } };
    const timer = setTimeout(() => {
      waiters.splice(waiters.indexOf(waiter), 1);
      resolve(false);
    }, ms);
    waiters.push(waiter);
  });
}

// One scripted answer per request: a list is consumed in order, anything else is reused.
const answers = plan.answers ?? {};
let roots = answers.roots ?? [];
function nextAnswer(kind) {
  const scripted = answers[kind];
  if (!Array.isArray(scripted) || kind === 'roots') return scripted;
  if (scripted.length === 0) return undefined;
  return scripted.shift();
}

function noAnswer(kind) {
  return new types.McpError(types.ErrorCode.InternalError, `ts_client: no scripted answer for ${kind}`);
}

const capabilities = plan.capabilities ?? {
  sampling: {},
  elicitation: { form: {}, url: {} },
  roots: { listChanged: true },
};
const client = new Client({ name: 'ts-client-driver', version: '1.0.0' }, { capabilities });
client.onerror = (error) => out.errors.push(String(error?.message ?? error));
client.fallbackNotificationHandler = async (notification) => notified(notification);
// Progress: record every notification first, then let the SDK route its own (numeric) tokens.
const sdkProgress = client._notificationHandlers.get('notifications/progress');
client.setNotificationHandler(types.ProgressNotificationSchema, async (notification) => {
  notified(notification);
  if (typeof notification.params.progressToken === 'number' && sdkProgress) await sdkProgress(notification);
});

function answered(request, response) {
  out.requests.push({ method: request.method, params: request.params ?? null, response });
  return response;
}

client.setRequestHandler(types.CreateMessageRequestSchema, async (request) => {
  const scripted = nextAnswer('sampling');
  if (scripted === undefined) throw noAnswer('sampling');
  return answered(request, {
    role: 'assistant',
    content: { type: 'text', text: scripted.text },
    model: scripted.model ?? 'ts-client-script',
    stopReason: 'endTurn',
  });
});

client.setRequestHandler(types.ElicitRequestSchema, async (request) => {
  const url = request.params.mode === 'url';
  const scripted = url && answers.elicitationUrl !== undefined ? nextAnswer('elicitationUrl') : nextAnswer('elicitation');
  if (scripted === undefined) throw noAnswer('elicitation');
  const response = { action: scripted.action };
  if (scripted.action === 'accept' && !url && scripted.content !== undefined) response.content = scripted.content;
  return answered(request, response);
});

client.setRequestHandler(types.ListRootsRequestSchema, async (request) => answered(request, { roots }));

function transport() {
  const c = plan.connect;
  if (c.url) {
    return new StreamableHTTPClientTransport(new URL(c.url), { requestInit: { headers: c.headers ?? {} } });
  }
  return new StdioClientTransport({
    command: c.command,
    args: c.args ?? [],
    env: { ...process.env, ...(c.env ?? {}) },
    cwd: c.cwd,
    stderr: 'inherit',
  });
}

function failure(error) {
  if (error instanceof types.McpError) return { code: error.code, message: error.message, data: error.data ?? null };
  return { code: null, message: String(error?.message ?? error), data: null };
}

async function perform(op) {
  const options = { timeout };
  switch (op.op) {
    case 'initialize':
      return out.initialize;
    case 'ping':
      return client.ping(options);
    case 'tools/list':
      return client.listTools({}, options);
    case 'tools/call': {
      const params = { name: op.name, arguments: op.arguments ?? {} };
      if (op.meta) params._meta = op.meta;
      const callOptions = { ...options, resetTimeoutOnProgress: op.resetTimeoutOnProgress ?? false };
      // With "progress", the SDK sets its own progressToken (the request id) and routes the replies.
      if (op.progress) callOptions.onprogress = () => {};
      return client.request({ method: 'tools/call', params }, types.CallToolResultSchema, callOptions);
    }
    case 'resources/list':
      return client.listResources({}, options);
    case 'resources/templates/list':
      return client.listResourceTemplates({}, options);
    case 'resources/read':
      return client.readResource({ uri: op.uri }, options);
    case 'resources/subscribe':
      return client.subscribeResource({ uri: op.uri }, options);
    case 'resources/unsubscribe':
      return client.unsubscribeResource({ uri: op.uri }, options);
    case 'prompts/list':
      return client.listPrompts({}, options);
    case 'prompts/get':
      return client.getPrompt({ name: op.name, arguments: op.arguments ?? {} }, options);
    case 'completion/complete':
      return client.complete({ ref: op.ref, argument: op.argument }, options);
    case 'logging/setLevel':
      return client.setLoggingLevel(op.level, options);
    case 'roots/set':
      roots = op.roots;
      await client.sendRootsListChanged();
      return {};
    case 'request':
      return client.request({ method: op.method, params: op.params ?? {} }, types.ResultSchema, options);
    case 'wait': {
      const arrived = await waitFor(op.method, op.count ?? 1, op.timeoutMs ?? timeout);
      if (!arrived) throw new Error(`timed out waiting for ${op.count ?? 1} ${op.method}; got ${count(op.method)}`);
      return { count: count(op.method) };
    }
    default:
      throw new Error(`ts_client: unknown operation ${op.op}`);
  }
}

let status = 0;
try {
  // The SDK tells the transport which version the handshake settled on; keep it (stdio too).
  const wire = transport();
  let negotiated = null;
  const setVersion = wire.setProtocolVersion?.bind(wire);
  wire.setProtocolVersion = (version) => {
    negotiated = version;
    setVersion?.(version);
  };
  await client.connect(wire, { timeout });
  out.initialize = {
    protocolVersion: negotiated,
    serverInfo: client.getServerVersion() ?? null,
    capabilities: client.getServerCapabilities() ?? null,
    instructions: client.getInstructions() ?? null,
  };
  for (const op of plan.operations ?? []) {
    try {
      out.results.push({ op: op.op, ok: true, result: await perform(op) });
    } catch (error) {
      out.results.push({ op: op.op, ok: false, error: failure(error) });
    }
  }
} catch (error) {
  out.fatal = failure(error);
  status = 1;
} finally {
  await client.close().catch((error) => out.errors.push(String(error?.message ?? error)));
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(status);
