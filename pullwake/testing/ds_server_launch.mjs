// Launch the Durable Streams reference server (@durable-streams/server) for tests.
//
// Owned by pullwake.testing.realserver, which starts it as
//     node ds_server_launch.mjs [--port=N] [--data-dir=DIR] [--long-poll-timeout-ms=N] ...
// with PULLWAKE_DS_SERVER_MODULE set to the absolute path of the package's ESM
// entry (node_modules/@durable-streams/server/dist/index.js).
//
// Every option can also come from the environment (argv wins):
//     PULLWAKE_DS_HOST                  (default 127.0.0.1)
//     PULLWAKE_DS_PORT                  (default 0 = a random free port)
//     PULLWAKE_DS_DATA_DIR              (file-backed storage; unset = memory)
//     PULLWAKE_DS_LONG_POLL_TIMEOUT_MS  (server default 30000)
//     PULLWAKE_DS_CURSOR_INTERVAL_SECONDS
//     PULLWAKE_DS_COMPRESSION           ("0"/"false" turns gzip off)
//     PULLWAKE_DS_WEBHOOKS              ("1"/"true" turns webhooks on)
//     PULLWAKE_DS_STOP_GRACE_MS         (cap on a graceful stop, default 5000)
//
// Protocol with the parent: once listening, ONE line of JSON goes to stdout,
// {"url": "http://127.0.0.1:PORT", "port": PORT, "pid": PID}; nothing else is
// ever written to stdout. SIGTERM / SIGINT / stdin EOF (the parent went away)
// call the server's stop() and exit 0; a stop slower than the grace exits 0 anyway.
// While stopping, idle keep-alive connections are closed as soon as they are idle.
// Start-up failures are printed to stderr and exit 1.

import { pathToFileURL } from "node:url"
import process from "node:process"

const OPTIONS = {
  host: "PULLWAKE_DS_HOST",
  port: "PULLWAKE_DS_PORT",
  "data-dir": "PULLWAKE_DS_DATA_DIR",
  "long-poll-timeout-ms": "PULLWAKE_DS_LONG_POLL_TIMEOUT_MS",
  "cursor-interval-seconds": "PULLWAKE_DS_CURSOR_INTERVAL_SECONDS",
  compression: "PULLWAKE_DS_COMPRESSION",
  webhooks: "PULLWAKE_DS_WEBHOOKS",
  "stop-grace-ms": "PULLWAKE_DS_STOP_GRACE_MS",
}

function fail(message) {
  process.stderr.write(`ds_server_launch: ${message}\n`)
  process.exit(1)
}

function readOptions(argv, env) {
  const values = {}
  for (const [name, envName] of Object.entries(OPTIONS)) {
    if (env[envName] !== undefined && env[envName] !== "") values[name] = env[envName]
  }
  for (const arg of argv) {
    const match = /^--([a-z-]+)=(.*)$/.exec(arg)
    if (!match || !(match[1] in OPTIONS)) fail(`unknown argument ${JSON.stringify(arg)}`)
    values[match[1]] = match[2]
  }
  return values
}

function toInt(name, text) {
  if (!/^\d+$/.test(text)) fail(`--${name} must be a non-negative integer, got ${JSON.stringify(text)}`)
  return Number(text)
}

function toBool(text) {
  return !["0", "false", "no", "off", ""].includes(String(text).toLowerCase())
}

const values = readOptions(process.argv.slice(2), process.env)
const modulePath = process.env.PULLWAKE_DS_SERVER_MODULE
if (!modulePath) fail("PULLWAKE_DS_SERVER_MODULE is not set (path of @durable-streams/server dist/index.js)")

let DurableStreamTestServer
try {
  ;({ DurableStreamTestServer } = await import(pathToFileURL(modulePath).href))
} catch (err) {
  fail(`cannot import ${modulePath}: ${err && err.stack ? err.stack : err}`)
}
if (typeof DurableStreamTestServer !== "function") fail(`${modulePath} exports no DurableStreamTestServer`)

const serverOptions = {
  host: values.host ?? "127.0.0.1",
  port: values.port !== undefined ? toInt("port", values.port) : 0,
}
if (values["data-dir"]) serverOptions.dataDir = values["data-dir"]
if (values["long-poll-timeout-ms"] !== undefined) {
  serverOptions.longPollTimeout = toInt("long-poll-timeout-ms", values["long-poll-timeout-ms"])
}
if (values["cursor-interval-seconds"] !== undefined) {
  serverOptions.cursorIntervalSeconds = toInt("cursor-interval-seconds", values["cursor-interval-seconds"])
}
if (values.compression !== undefined) serverOptions.compression = toBool(values.compression)
if (values.webhooks !== undefined) serverOptions.webhooks = toBool(values.webhooks)
const stopGraceMs = values["stop-grace-ms"] !== undefined ? toInt("stop-grace-ms", values["stop-grace-ms"]) : 5000

const server = new DurableStreamTestServer(serverOptions)
let url
try {
  url = await server.start()
} catch (err) {
  fail(`start failed: ${err && err.stack ? err.stack : err}`)
}

let stopping = false
async function shutdown(reason) {
  if (stopping) return
  stopping = true
  process.stderr.write(`ds_server_launch: stopping (${reason})\n`)
  const timer = setTimeout(() => {
    process.stderr.write(`ds_server_launch: stop took longer than ${stopGraceMs} ms, exiting\n`)
    process.exit(0)
  }, stopGraceMs)
  timer.unref()
  // server.stop() waits in http.Server.close() until every connection is
  // closed, and a keep-alive connection that was busy when close() began only
  // goes idle later (Node then waits out its 5 s keep-alive timeout). Closing
  // idle connections as they appear keeps in-flight answers intact (pending
  // long-polls still get their 200 []) and makes the stop take milliseconds.
  // `server` is a TypeScript-private field of DurableStreamTestServer.
  const httpServer = server.server
  const reaper =
    httpServer && typeof httpServer.closeIdleConnections === "function"
      ? setInterval(() => httpServer.closeIdleConnections(), 20)
      : null
  try {
    await server.stop()
  } catch (err) {
    process.stderr.write(`ds_server_launch: stop failed: ${err && err.stack ? err.stack : err}\n`)
  }
  if (reaper) clearInterval(reaper)
  process.exit(0)
}

process.on("SIGTERM", () => void shutdown("SIGTERM"))
process.on("SIGINT", () => void shutdown("SIGINT"))
// The parent holds our stdin open; EOF means it has gone, so do not linger as an orphan.
process.stdin.on("end", () => void shutdown("stdin closed"))
process.stdin.on("error", () => void shutdown("stdin error"))
process.stdin.resume()

const port = Number(new URL(url).port)
process.stdout.write(JSON.stringify({ url, port, pid: process.pid }) + "\n")
