-- covey PostgreSQL schema, version 8: what operators (the dashboard) read.
-- shards.acquired_at: when the current owner took the shard (set with each new
-- epoch). Three indexes on (entity_type, tag, id) keep the operators' reads
-- bounded on a large store, each reading only the rows it returns:
-- messages_listing (every row) serves list_messages of one entity type and tag,
-- newest first (a workflow, cron or webhook listing among a million jobs);
-- messages_pending (unprocessed rows) and messages_dead (error replies) serve
-- storage.inspection: a tag's backlog and dead letters, capped counts, and the
-- tags in use (a loose index scan). The price: messages_listing adds an index
-- entry to every stored message and every completion, messages_pending one to
-- every stored message; messages_dead is written only when a message fails for
-- good. On a large existing store, building them takes a while and blocks writes
-- to messages meanwhile (a migration runs in one transaction: no CONCURRENTLY).
ALTER TABLE shards ADD COLUMN acquired_at double precision;
CREATE INDEX messages_listing ON messages (entity_type, tag, id);
CREATE INDEX messages_pending ON messages (entity_type, tag, id) WHERE NOT processed;
CREATE INDEX messages_dead ON messages (entity_type, tag, id) WHERE processed AND reply_is_error;
