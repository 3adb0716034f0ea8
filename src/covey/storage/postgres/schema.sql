-- The whole covey PostgreSQL schema for a fresh install (= every migration applied).
-- Runs with search_path set to the configured schema; names are unqualified.

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE runners (
    address text PRIMARY KEY,
    machine_id integer NOT NULL UNIQUE CHECK (machine_id BETWEEN 0 AND 1023),
    groups text[] NOT NULL,
    weight integer NOT NULL,
    last_heartbeat double precision NOT NULL,
    -- backend pid of the runner's lock session (see migration 0003)
    lock_pid integer
);

-- One row per shard ever acquired; epoch grows by one on every acquisition and
-- fences completion writes of earlier owners.
CREATE TABLE shards (
    shard_group text NOT NULL,
    shard integer NOT NULL,
    epoch bigint NOT NULL,
    owner text NOT NULL,
    PRIMARY KEY (shard_group, shard),
    -- when the current owner acquired it (see migration 0008)
    acquired_at double precision
);

-- fillfactor 50: the lease update (lease_until, attempts: no indexed column)
-- finds room on its page and stays a HOT update, adding no index entries.
CREATE TABLE messages (
    id bigint PRIMARY KEY,
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    shard_group text NOT NULL,
    shard integer NOT NULL,
    tag text NOT NULL,
    payload bytea NOT NULL,
    headers text NOT NULL DEFAULT '{}',
    primary_key text,
    dedupe_key text UNIQUE,
    deliver_at double precision,
    priority smallint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    lease_until double precision,
    created_at double precision NOT NULL,
    processed boolean NOT NULL DEFAULT false,
    processed_at double precision,
    reply bytea,
    reply_is_error boolean NOT NULL DEFAULT false,
    -- reschedules after failed runs and the last one's error (see migration 0004)
    failures integer NOT NULL DEFAULT 0,
    last_error text,
    starts integer NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- The runner's read: unprocessed messages of its shards, by priority then id.
CREATE INDEX messages_unprocessed
    ON messages (shard_group, shard, priority DESC, id) WHERE NOT processed;
-- purge(): successful replies by completion time (see migration 0005).
CREATE INDEX messages_purge ON messages (processed_at) WHERE processed AND NOT reply_is_error;
-- purge() and count_messages(): error replies (dead letters among them) by type.
CREATE INDEX messages_errors ON messages (entity_type, processed_at)
    WHERE processed AND reply_is_error;
-- clear_address(): unprocessed rows of one entity.
CREATE INDEX messages_address ON messages (entity_type, entity_id) WHERE NOT processed;
-- list_messages of one entity type and tag, newest first (see migration 0008).
CREATE INDEX messages_listing ON messages (entity_type, tag, id);
-- storage.inspection (see migration 0008): a tag's backlog and its dead letters by id.
CREATE INDEX messages_pending ON messages (entity_type, tag, id) WHERE NOT processed;
CREATE INDEX messages_dead ON messages (entity_type, tag, id) WHERE processed AND reply_is_error;

CREATE TABLE state (
    key text PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL
);

-- The event log and its subscriber groups (see migration 0006).
CREATE TABLE events (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    type text NOT NULL,
    version bigint NOT NULL,
    key text NOT NULL,
    payload bytea NOT NULL,
    headers text NOT NULL DEFAULT '{}',
    published_at double precision NOT NULL,
    groups text NOT NULL DEFAULT '[]',
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    position bigint UNIQUE
);
CREATE INDEX events_unsequenced ON events (xid, id) WHERE position IS NULL;
CREATE INDEX events_topic ON events (topic, position);
CREATE INDEX events_published ON events (published_at);

CREATE TABLE event_groups (
    grp text NOT NULL,
    topic text NOT NULL,
    start text NOT NULL,
    created_at double precision NOT NULL,
    cursor bigint NOT NULL DEFAULT 0,
    replay_until bigint NOT NULL DEFAULT 0,
    replay bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, topic)
);

-- Stream items, routes and mailboxes of covey.realtime (see migration 0007); keys
-- sort bytewise (COLLATE "C").
CREATE TABLE stream_heads (
    stream text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL,
    last bigint NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE stream_items (
    stream text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    id bigint NOT NULL,
    payload bytea NOT NULL,
    headers text NOT NULL DEFAULT '{}',
    published_at double precision NOT NULL,
    PRIMARY KEY (stream, position),
    -- a retried append finds its item by id: no second position
    UNIQUE (stream, id)
);
-- trim(before=...): items by age
CREATE INDEX stream_items_published ON stream_items (published_at);

-- Who listens where: (kind, key, conn) -> runner, with an expiry.
CREATE TABLE routes (
    kind text NOT NULL,
    key text COLLATE "C" NOT NULL,
    conn text COLLATE "C" NOT NULL,
    runner text NOT NULL,
    tenant text NOT NULL DEFAULT '',
    expires_at double precision NOT NULL,
    PRIMARY KEY (kind, key, conn)
);
CREATE INDEX routes_runner ON routes (runner);
CREATE INDEX routes_expires ON routes (expires_at);

-- Messages kept for offline users, read in the order they were stored (seq).
CREATE TABLE mail (
    key text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    payload bytea NOT NULL,
    headers text NOT NULL DEFAULT '{}',
    stored_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (key, id)
);
CREATE INDEX mail_key ON mail (key, seq);
CREATE INDEX mail_expires ON mail (expires_at);
