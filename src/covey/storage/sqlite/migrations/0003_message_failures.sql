-- covey on SQLite, version 3: retries. ``failures`` counts how often a message
-- was rescheduled after a failed run, ``last_error`` says why the last time.
-- Both are cleared by reset_request (a dead-letter retry).

ALTER TABLE covey_messages ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE covey_messages ADD COLUMN last_error TEXT;
-- starts counts runs that began (mark_started), so a re-run after a crash shows.
ALTER TABLE covey_messages ADD COLUMN starts INTEGER NOT NULL DEFAULT 0;
