-- covey on SQLite, version 7: what operators (the dashboard) read.
-- covey_shards.acquired_at: when the current owner took the shard (set with each
-- new epoch). Three indexes on (entity_type, tag, id) keep the operators' reads
-- bounded, each reading only the rows it returns: covey_messages_listing (every
-- row) serves list_messages of one entity type and tag, newest first;
-- covey_messages_pending (unprocessed rows) and covey_messages_dead (error
-- replies) serve storage.inspection: a tag's backlog and dead letters, capped
-- counts and the tags in use. The first two add an index entry to every stored
-- message (the listing one to every completion too); the dead one is written
-- only when a message fails for good.

ALTER TABLE covey_shards ADD COLUMN acquired_at REAL;
CREATE INDEX covey_messages_listing
    ON covey_messages (entity_type, tag, id);
CREATE INDEX covey_messages_pending
    ON covey_messages (entity_type, tag, id)
    WHERE processed = 0;
CREATE INDEX covey_messages_dead
    ON covey_messages (entity_type, tag, id)
    WHERE processed = 1 AND reply_is_error = 1;
