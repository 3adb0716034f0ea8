-- covey PostgreSQL schema, version 3: the backend pid of each runner's lock session.
-- A runner whose recorded lock session is gone is dead (its advisory locks went with
-- it), so peers stop counting it at once instead of waiting for its heartbeat TTL.
ALTER TABLE runners ADD COLUMN lock_pid integer;
