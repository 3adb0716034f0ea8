-- covey on SQLite, version 5: the event log (domain events) and its subscriber
-- groups. SQLite has one writer at a time, so an event gets its position in the
-- transaction that stores it: positions follow commit order.

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
