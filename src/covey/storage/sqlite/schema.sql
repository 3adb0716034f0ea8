-- The whole covey schema for a fresh SQLite install: the result of applying
-- migrations/0001_initial.sql … 0007_inspection.sql in order (a test checks it).

CREATE TABLE covey_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE covey_runners (
    address        TEXT PRIMARY KEY,
    machine_id     INTEGER NOT NULL UNIQUE,
    groups         TEXT NOT NULL,
    weight         INTEGER NOT NULL,
    registered_at  REAL NOT NULL,
    last_heartbeat REAL NOT NULL
);

-- One row per shard: the lease, its holder and the fencing epoch.
CREATE TABLE covey_shards (
    shard_group TEXT NOT NULL,
    shard       INTEGER NOT NULL,
    epoch       INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    -- when the current owner acquired it (see migration 0007)
    acquired_at REAL,
    PRIMARY KEY (shard_group, shard)
);

CREATE TABLE covey_messages (
    id             INTEGER PRIMARY KEY,
    entity_type    TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    shard_group    TEXT NOT NULL,
    shard          INTEGER NOT NULL,
    tag            TEXT NOT NULL,
    payload        BLOB NOT NULL,
    headers        TEXT NOT NULL DEFAULT '{}',
    primary_key    TEXT,
    dedupe_key     TEXT UNIQUE,
    deliver_at     REAL,
    priority       INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    lease_until    REAL,
    created_at     REAL NOT NULL,
    processed      INTEGER NOT NULL DEFAULT 0,
    processed_at   REAL,
    reply          BLOB,
    reply_is_error INTEGER NOT NULL DEFAULT 0,
    -- reschedules after failed runs and the last one's error (see migration 0003)
    failures       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    starts         INTEGER NOT NULL DEFAULT 0
);

-- The delivery scan: unprocessed messages of a shard, highest priority first.
CREATE INDEX covey_messages_unprocessed
    ON covey_messages (shard_group, shard, priority DESC, id)
    WHERE processed = 0;

-- clear_address: the unprocessed messages of one entity.
CREATE INDEX covey_messages_entity
    ON covey_messages (entity_type, entity_id)
    WHERE processed = 0;

-- purge: successful replies by completion time (see migration 0004).
CREATE INDEX covey_messages_purge
    ON covey_messages (processed_at)
    WHERE processed = 1 AND reply_is_error = 0;

-- purge and count_messages: error replies (dead letters among them) by type.
CREATE INDEX covey_messages_errors
    ON covey_messages (entity_type, processed_at)
    WHERE processed = 1 AND reply_is_error = 1;

-- list_messages of one entity type and tag, newest first (see migration 0007).
CREATE INDEX covey_messages_listing
    ON covey_messages (entity_type, tag, id);
-- storage.inspection (see migration 0007): a tag's backlog and its dead letters by id.
CREATE INDEX covey_messages_pending
    ON covey_messages (entity_type, tag, id)
    WHERE processed = 0;
CREATE INDEX covey_messages_dead
    ON covey_messages (entity_type, tag, id)
    WHERE processed = 1 AND reply_is_error = 1;

CREATE TABLE covey_state (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    version INTEGER NOT NULL
);

-- The event log: positions are given in the storing transaction (see 0005).
CREATE TABLE covey_events (
    id           INTEGER PRIMARY KEY,
    topic        TEXT NOT NULL,
    type         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    key          TEXT NOT NULL,
    payload      BLOB NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    published_at REAL NOT NULL,
    groups       TEXT NOT NULL DEFAULT '[]',
    position     INTEGER UNIQUE
);
CREATE INDEX covey_events_topic ON covey_events (topic, position);
CREATE INDEX covey_events_published ON covey_events (published_at);

CREATE TABLE covey_event_groups (
    grp          TEXT NOT NULL,
    topic        TEXT NOT NULL,
    start        TEXT NOT NULL,
    created_at   REAL NOT NULL,
    cursor       INTEGER NOT NULL DEFAULT 0,
    replay_until INTEGER NOT NULL DEFAULT 0,
    replay       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, topic)
);

-- Stream items, routes and mailboxes of covey.realtime: positions are given in
-- the storing transaction (see 0006).
CREATE TABLE covey_stream_heads (
    stream     TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    last       INTEGER NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE covey_stream_items (
    stream       TEXT NOT NULL,
    position     INTEGER NOT NULL,
    id           INTEGER NOT NULL,
    payload      BLOB NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    published_at REAL NOT NULL,
    PRIMARY KEY (stream, position),
    -- a retried append finds its item by id: no second position
    UNIQUE (stream, id)
) WITHOUT ROWID;
-- trim(before=...): items by age
CREATE INDEX covey_stream_items_published ON covey_stream_items (published_at);

-- Who listens where: (kind, key, conn) -> runner, with an expiry.
CREATE TABLE covey_routes (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    conn       TEXT NOT NULL,
    runner     TEXT NOT NULL,
    tenant     TEXT NOT NULL DEFAULT '',
    expires_at REAL NOT NULL,
    PRIMARY KEY (kind, key, conn)
);
CREATE INDEX covey_routes_runner ON covey_routes (runner);
CREATE INDEX covey_routes_expires ON covey_routes (expires_at);

-- Messages kept for offline users, read in the order they were stored: seq is
-- the rowid (an alias of it keeps its values across VACUUM); (key, id) is the
-- unique key.
CREATE TABLE covey_mail (
    seq        INTEGER PRIMARY KEY,
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    payload    BLOB NOT NULL,
    headers    TEXT NOT NULL DEFAULT '{}',
    stored_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (key, id)
);
CREATE INDEX covey_mail_key ON covey_mail (key, seq);
CREATE INDEX covey_mail_expires ON covey_mail (expires_at);
