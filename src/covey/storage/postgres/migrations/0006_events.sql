-- covey PostgreSQL schema, version 6: the event log (domain events) and its
-- subscriber groups. An event is stored with position NULL and the id of the
-- transaction that stored it (xid); the sequencer gives positions, in (xid, id)
-- order, only to rows whose transaction is older than every open one
-- (pg_snapshot_xmin), so a reader that keeps "position > last" never skips a
-- row that committed late.
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
