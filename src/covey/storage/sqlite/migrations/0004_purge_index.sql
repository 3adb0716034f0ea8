-- covey on SQLite, version 4: retention. Processed rows are indexed in two
-- partial indexes by outcome, so purge() walks the successful replies without
-- ever passing the error replies it keeps (dead-lettered jobs, for an operator),
-- and the dead-letter count reads only error rows.

DROP INDEX covey_messages_processed_at;
CREATE INDEX covey_messages_purge
    ON covey_messages (processed_at)
    WHERE processed = 1 AND reply_is_error = 0;
CREATE INDEX covey_messages_errors
    ON covey_messages (entity_type, processed_at)
    WHERE processed = 1 AND reply_is_error = 1;
