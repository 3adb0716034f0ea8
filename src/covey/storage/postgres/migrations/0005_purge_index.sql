-- covey PostgreSQL schema, version 5: retention. Processed rows are indexed in
-- two partial indexes by outcome, so purge() walks the successful replies without
-- ever passing the error replies it keeps (dead-lettered jobs, for an operator),
-- and the dead-letter count reads only error rows (a plan that needs no
-- statistics: each index holds exactly the rows its queries want).
DROP INDEX messages_purge;
CREATE INDEX messages_purge ON messages (processed_at) WHERE processed AND NOT reply_is_error;
CREATE INDEX messages_errors ON messages (entity_type, processed_at)
    WHERE processed AND reply_is_error;
