// Drives covey.js from a test: commands as JSON lines on stdin, events as JSON lines on stdout.
//   node --experimental-websocket --experimental-eventsource covey_js_driver.mjs \
//        <path of covey.js> ws|sse <url> <options as JSON>
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const [modulePath, mode, url, optionsJson] = process.argv.slice(2);
const { connect, subscribe } = await import(pathToFileURL(modulePath).href);
const options = JSON.parse(optionsJson || "{}");
const out = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const failure = (error) => ({ reason: error.reason, message: error.message,
  retryable: error.retryable });

let client;
if (mode === "ws") {
  client = connect(url, {
    ...options,
    token: options.tokens ? (() => options.tokens.shift()) : options.token,
    onPush: (name, payload, mid) => out({ event: "push", name, payload, mid }),
    onState: (state) => out({ event: "state", state }),
    onReconnect: () => out({ event: "reconnect" }),
  });
  client.ready.then(() => out({ event: "ready" }), (error) => out({ event: "refused",
    ...failure(error) }));
} else {
  client = subscribe(url, {
    ...options,
    onMessage: (data, meta) => out({ event: "message", data, id: meta.id, type: meta.event }),
    onReset: (cursor) => out({ event: "reset", cursor }),
    onState: (state) => out({ event: "state", state }),
  });
}

const streams = new Map();
for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  const { tag } = command;
  if (command.do === "call") {
    client.call(command.method, command.params).then(
      (result) => out({ tag, result: result ?? null }),
      (error) => out({ tag, error: failure(error) }));
  } else if (command.do === "stream") {
    const done = client.stream(command.method, command.params,
      (chunk) => out({ tag, chunk }));
    streams.set(tag, done);
    done.then(() => out({ tag, end: true }), (error) => out({ tag, error: failure(error) }));
  } else if (command.do === "cancel") {
    streams.get(tag).cancel();
  } else if (command.do === "state") {
    out({ tag, state: client.state });
  } else if (command.do === "close") {
    client.close();
    out({ tag, closed: true });
  } else if (command.do === "exit") {
    process.exit(0);
  }
}
