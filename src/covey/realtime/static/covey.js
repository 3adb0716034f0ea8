/**
 * covey.js: the browser client of covey's real-time endpoints (an ES module, no dependencies).
 *
 * Typed RPC over WebSocket (wire `covey.v1`, JSON codec):
 *
 *   import { connect } from "/covey.js";
 *   const chat = connect("wss://example.com/rpc", {
 *     token: () => fetchToken(),            // a string, or a function (may return a Promise)
 *     onPush: { notice: (payload, mid) => show(payload) },   // or (name, payload, mid) => ...
 *     onState: (state) => badge(state),     // "connecting" | "open" | "reconnecting" | "closed"
 *     onReconnect: () => resubscribe(),     // after each reconnect (not the first connect)
 *     cap: 5,                               // seconds: the largest delay between attempts
 *   });
 *   const id = await chat.call("send", { text: "hi" });             // a Promise of the result
 *   const done = chat.stream("history", { after: 0 }, (msg) => add(msg));
 *   await done;  // the stream ended (done.cancel() stops it early)
 *   chat.close();
 *
 * - The token travels as the `bearer.<token>` subprotocol next to `covey.v1.json` (browsers
 *   cannot set headers); the server echoes `covey.v1.json` only.
 * - A connection is open once the server answered its first ping (the token was accepted).
 *   After a drop it reconnects at once, then after random(0, min(cap, 0.25 * 2^n)) seconds.
 * - Calls made while disconnected wait (at most `buffer`, default 1000, else they fail with
 *   `rate_limited`), each until `callTimeout` seconds (default 30; then `timeout`). A call
 *   in flight when the socket dropped fails with `peer_unavailable`: it may have run, so it
 *   is not sent again.
 * - A push with an id (`mid`) seen among the last 10,000 is dropped (it came twice).
 * - Each push id is acknowledged once its handlers ran (a Promise they return settled), a
 *   repeat again: `{t: "ack", mids: [...]}`, batched (100 ids or 50 ms), kept across a
 *   reconnect. The server deletes an acknowledged message from the user's mailbox; one not
 *   acknowledged is handed over again on the next connect.
 * - Close 4401 / 4403 stops the client (errors `unauthenticated` / `forbidden`), except 4401
 *   "token expired" with a token function: it reconnects with a fresh token.
 * - Errors are `CoveyError`s: `error.reason` is covey's reason (`"forbidden"`, `"timeout"`...).
 *
 * Server-sent events with resume:
 *
 *   import { subscribe } from "/covey.js";
 *   const feed = subscribe("/streams/orders", {
 *     onMessage: (data, { id, event }) => add(data),    // data: the parsed JSON
 *     onReset: (cursor) => refetchEverything(),          // the cursor fell out of retention
 *     onState: (state) => badge(state),
 *     events: ["order.created"],                         // named events to listen to as well
 *   });
 *   feed.close();
 *
 * The browser's EventSource resends `Last-Event-ID` by itself when a stream drops; when it
 * gives up (an HTTP error: readyState CLOSED) the client opens a new one after a backoff,
 * passing `?after=<last id>`. An item whose id is not after the last one is dropped.
 */

const PROTOCOL = "covey.v1.json";
const BASE_DELAY = 0.25;
const REMEMBERED_MIDS = 10000;
const ACK_DELAY_MS = 50;      // an ack waits this long for more to share its frame
const ACK_BATCH = 100;        // ids in one ack frame at most (sent at once when that many wait)
const ACK_LIMIT = 10000;      // ids kept while disconnected (the oldest go first)
const MAX_MID = 200;          // the longest id an ack frame may carry
const RETRYABLE = new Set(["peer_unavailable", "timeout", "rate_limited", "shutting_down",
  "slow_consumer", "storage_unavailable", "mailbox_full", "not_owner", "version_conflict"]);

/** An error of covey: match on `reason`, never on the message. */
export class CoveyError extends Error {
  constructor(message, reason, details = {}) {
    super(message);
    this.name = "CoveyError";
    this.reason = reason;
    this.details = details;
  }

  /** Whether the same call may succeed if tried again later. */
  get retryable() {
    return RETRYABLE.has(this.reason);
  }
}

/** Seconds to wait before reconnect attempt `attempt` (0: at once), with full jitter. */
export function backoffDelay(attempt, cap = 5) {
  if (attempt <= 0) return 0;
  return Math.random() * Math.min(cap, BASE_DELAY * 2 ** Math.min(attempt - 1, 32));
}

/** A client of a WebSocket contract (see the header comment). */
export function connect(url, options = {}) {
  const cap = options.cap ?? 5;
  const callTimeout = (options.callTimeout ?? 30) * 1000;
  const pingInterval = (options.pingInterval ?? 10) * 1000;
  const bufferLimit = options.buffer ?? 1000;
  const pending = new Map();          // id -> call, request sent
  const buffered = [];                // calls waiting for a connection
  const seen = new Set();             // the last mids (insertion ordered)
  const handling = new Set();         // mids whose handlers run: acknowledged when done
  const acks = new Set();             // mids to acknowledge (insertion ordered)
  let ackTimer = null;
  const handlers = new Map();
  let nextId = 1, attempt = 0, ws = null, state = "connecting", opened = false;
  let pinger = null, retryTimer = null, lastReceived = 0, failure = null;
  let readyResolve, readyReject;
  const ready = new Promise((resolve, reject) => { readyResolve = resolve; readyReject = reject; });
  ready.catch(() => {});

  const onPush = options.onPush;
  if (onPush && typeof onPush === "object") {
    for (const [name, fn] of Object.entries(onPush)) on(name, fn);
  }

  function setState(next) {
    if (state === next) return;
    state = next;
    if (options.onState) options.onState(next);
  }

  function on(name, fn) {
    if (!handlers.has(name)) handlers.set(name, []);
    handlers.get(name).push(fn);
  }

  async function token() {
    const source = options.token;
    return typeof source === "function" ? await source() : source;
  }

  function send(frame) {
    ws.send(JSON.stringify(frame));
  }

  function dispatch(call) {
    call.id = nextId++;
    pending.set(call.id, call);
    const frame = { t: "req", id: call.id, m: call.method };
    if (call.params !== undefined && call.params !== null) frame.p = call.params;
    send(frame);
    if (call.onChunk) clearTimeout(call.timer);  // a stream may run for long once sent
  }

  function finish(call, error, result) {
    clearTimeout(call.timer);
    pending.delete(call.id);
    const at = buffered.indexOf(call);
    if (at >= 0) buffered.splice(at, 1);
    if (error) call.reject(error); else call.resolve(result);
  }

  function submit(method, params, onChunk) {
    let call;
    const promise = new Promise((resolve, reject) => {
      call = { method, params, onChunk, resolve, reject, id: null };
    });
    if (state === "closed") {
      call.reject(failure || new CoveyError("the client is closed", "shutting_down"));
      return { promise, call };
    }
    call.timer = setTimeout(() => {
      if (call.id !== null && pending.has(call.id) && state === "open") {
        send({ t: "cancel", id: call.id });
      }
      finish(call, new CoveyError(`${method} got no reply within ${callTimeout / 1000} s`,
        "timeout"));
    }, callTimeout);
    if (state === "open") dispatch(call);
    else if (buffered.length >= bufferLimit) {
      finish(call, new CoveyError(`${buffered.length} calls already wait for the connection`,
        "rate_limited"));
    } else buffered.push(call);
    return { promise, call };
  }

  function onFrame(frame) {
    const call = typeof frame.id === "number" ? pending.get(frame.id) : undefined;
    switch (frame.t) {
      case "pong":
        if (state !== "open") becameOpen();
        break;
      case "ping":
        send({ t: "pong" });
        break;
      case "push": {
        const key = frame.mid === undefined || frame.mid === null ? null : String(frame.mid);
        if (key !== null) {
          if (seen.has(key)) {
            if (!handling.has(key)) ack(key);  // handled: the server still had it
            return;
          }
          seen.add(key);
          if (seen.size > REMEMBERED_MIDS) seen.delete(seen.values().next().value);
        }
        const results = [];
        for (const fn of handlers.get(frame.n) || []) {
          results.push(safely(() => fn(frame.p, frame.mid)));
        }
        if (typeof onPush === "function") {
          results.push(safely(() => onPush(frame.n, frame.p, frame.mid)));
        }
        if (key !== null) {
          handling.add(key);
          Promise.allSettled(results).then(() => { handling.delete(key); ack(key); });
        }
        break;
      }
      case "res":
        if (call) finish(call, null, frame.p);
        break;
      case "chunk":
        if (call && call.onChunk) safely(() => call.onChunk(frame.p));
        break;
      case "end":
        if (call) finish(call, null, undefined);
        break;
      case "err":
        if (call) finish(call, new CoveyError(frame.msg, frame.r, frame.d || {}));
        break;
    }
  }

  function safely(fn) {  // what fn returned (a Promise is awaited by the ack, its error logged)
    try {
      const result = fn();
      if (result && typeof result.catch === "function") result.catch((e) => console.error(e));
      return result;
    } catch (error) {
      console.error(error);
      return undefined;
    }
  }

  function ack(mid) {
    if (mid.length === 0 || mid.length > MAX_MID) return;  // not an id the wire carries
    acks.delete(mid);
    acks.add(mid);
    if (acks.size > ACK_LIMIT) acks.delete(acks.values().next().value);
    if (acks.size >= ACK_BATCH) sendAcks();
    else if (ackTimer === null) ackTimer = setTimeout(sendAcks, ACK_DELAY_MS);
  }

  function sendAcks() {  // what cannot be sent now is sent once open again
    clearTimeout(ackTimer);
    ackTimer = null;
    if (state !== "open" || !ws || ws.readyState !== WebSocket.OPEN) return;
    while (acks.size > 0) {
      const mids = [];
      for (const mid of acks) {
        mids.push(mid);
        if (mids.length === ACK_BATCH) break;
      }
      for (const mid of mids) acks.delete(mid);
      send({ t: "ack", mids });
    }
  }

  function becameOpen() {
    attempt = 0;
    const first = !opened;
    opened = true;
    for (const call of buffered.splice(0)) dispatch(call);
    setState("open");
    sendAcks();
    if (first) readyResolve();
    else if (options.onReconnect) safely(() => options.onReconnect());
  }

  async function open() {
    retryTimer = null;
    let credential;
    try {
      credential = await token();
    } catch (error) {
      return dropped(null, "");
    }
    if (state === "closed") return;
    const protocols = credential ? [PROTOCOL, `bearer.${credential}`] : [PROTOCOL];
    let socket;
    try {
      socket = new WebSocket(url, protocols);
    } catch (error) {  // a malformed URL, or a token that is no valid subprotocol
      failure = new CoveyError(`cannot open ${url}: ${error.message}`, "invalid_argument");
      return stop(failure);
    }
    ws = socket;
    const gone = (code, reason) => {  // once per socket, whichever event comes first
      if (ws !== socket) return;
      clearTimeout(opening);
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try { socket.close(); } catch (error) { /* closing already */ }
      dropped(code, reason);
    };
    // a socket that never opens: some implementations report an error and no close
    const opening = setTimeout(() => gone(1006, ""), callTimeout);
    socket.onerror = () => {
      if (socket.readyState === WebSocket.CONNECTING) gone(1006, "");  // else a close follows
    };
    socket.onclose = (event) => gone(event.code, event.reason || "");
    socket.onopen = () => {
      clearTimeout(opening);
      lastReceived = Date.now();
      send({ t: "ping" });  // its pong says the token was accepted: then the client is open
      pinger = setInterval(() => {
        if (Date.now() - lastReceived > pingInterval * 2) return gone(1006, "");
        send({ t: "ping" });
      }, pingInterval);
    };
    socket.onmessage = (event) => {
      lastReceived = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (frame && typeof frame === "object") onFrame(frame);
    };
  }

  function dropped(code, reason) {
    clearInterval(pinger);
    ws = null;
    if (state === "closed") return;
    for (const call of [...pending.values()]) {
      finish(call, new CoveyError("the connection dropped while the call was in flight; it " +
        "may or may not have run", "peer_unavailable"));
    }
    const expired = code === 4401 && reason === "token expired" &&
      typeof options.token === "function";
    if ((code === 4401 || code === 4403) && !expired) {
      failure = new CoveyError(`the server refused the connection (${reason})`,
        code === 4401 ? "unauthenticated" : "forbidden", { closeCode: code });
      return stop(failure);
    }
    setState(opened ? "reconnecting" : "connecting");
    retryTimer = setTimeout(open, backoffDelay(attempt++, cap) * 1000);
  }

  function stop(error) {
    setState("closed");
    clearTimeout(retryTimer);
    clearTimeout(ackTimer);
    clearInterval(pinger);
    for (const call of [...pending.values(), ...buffered]) finish(call, error);
    readyReject(error);
  }

  open();
  return {
    /** Resolves once the first connection is open; rejects when refused or closed. */
    ready,
    get state() { return state; },
    call(method, params) {
      return submit(method, params, null).promise;
    },
    stream(method, params, onChunk) {
      const { promise, call } = submit(method, params, onChunk);
      promise.cancel = () => {
        if (call.id !== null && pending.has(call.id) && ws && state === "open") {
          send({ t: "cancel", id: call.id });
        }
        finish(call, null, undefined);
      };
      return promise;
    },
    on,
    close() {
      if (state === "closed") return;
      const socket = ws;
      sendAcks();  // what was handled: not to be handed over again
      stop(failure || new CoveyError("the client is closed", "shutting_down"));
      if (socket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        socket.close(1000);
      }
    },
  };
}

function cursorAfter(id, last) {
  // "<epoch>:<position>": an item of the same epoch at or before the last one came twice
  if (!id || !last) return true;
  const [epoch, position] = id.split(":");
  const [lastEpoch, lastPosition] = last.split(":");
  if (epoch !== lastEpoch || position === undefined || lastPosition === undefined) return true;
  try {
    return BigInt(position) > BigInt(lastPosition);
  } catch (error) {
    return true;
  }
}

/** An SSE subscription that resumes after its last id (see the header comment). */
export function subscribe(url, options = {}) {
  const cap = options.cap ?? 5;
  let lastId = options.after ?? null, source = null, attempt = 0, timer = null;
  let state = "connecting", closed = false;

  function setState(next) {
    if (state === next) return;
    state = next;
    if (options.onState) options.onState(next);
  }

  function deliver(event) {
    const id = event.lastEventId || null;
    if (id && !cursorAfter(id, lastId)) return;
    if (id) lastId = id;
    let data = event.data;
    try { data = JSON.parse(event.data); } catch (error) { /* not JSON: as sent */ }
    if (options.onMessage) options.onMessage(data, { id, event: event.type });
  }

  function open() {
    timer = null;
    const target = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    if (lastId) target.searchParams.set("after", lastId);
    const es = new EventSource(target.toString(), { withCredentials: !!options.withCredentials });
    source = es;
    es.onopen = () => { attempt = 0; setState("open"); };
    es.onmessage = deliver;
    for (const name of options.events || []) es.addEventListener(name, deliver);
    es.addEventListener("reset", (event) => {
      let cursor = event.lastEventId || null;
      try { cursor = JSON.parse(event.data).cursor ?? cursor; } catch (error) { /* keep id */ }
      lastId = cursor;
      if (options.onReset) options.onReset(cursor);
    });
    es.onerror = () => {
      if (closed || source !== es) return;
      if (es.readyState === EventSource.CLOSED) {  // the browser gave up: we retry
        es.close();
        setState("reconnecting");
        timer = setTimeout(open, backoffDelay(attempt++ || 1, cap) * 1000);
      } else {
        setState("reconnecting");  // the browser retries by itself, with Last-Event-ID
      }
    };
  }

  open();
  return {
    get state() { return state; },
    get lastId() { return lastId; },
    close() {
      closed = true;
      clearTimeout(timer);
      if (source) source.close();
      setState("closed");
    },
  };
}
