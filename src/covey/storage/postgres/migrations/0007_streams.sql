-- covey PostgreSQL schema, version 7: stream items, routes and mailboxes
-- (covey.realtime). A stream's head row holds its epoch and the last position
-- given; an appending transaction moves it (INSERT .. ON CONFLICT DO UPDATE)
-- and keeps its row lock until it commits, so a second appender of the stream
-- waits and positions follow commit order. Keys sort bytewise (COLLATE "C"):
-- the same order on every backend, and cheaper comparisons than a locale's.
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
