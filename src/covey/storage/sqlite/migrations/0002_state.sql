-- covey on SQLite, version 2: the state store (small values with versions).

CREATE TABLE covey_state (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    version INTEGER NOT NULL
);
