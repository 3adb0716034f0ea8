-- covey on SQLite, version 6: stream items, routes and mailboxes
-- (covey.realtime). SQLite has one writer at a time, so an item gets its
-- position in the transaction that stores it: positions follow commit order.

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
