-- covey PostgreSQL schema, version 2: the versioned key-value state store.

CREATE TABLE state (
    key text PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL
);
