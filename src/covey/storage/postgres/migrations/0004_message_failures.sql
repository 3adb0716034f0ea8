-- covey PostgreSQL schema, version 4: retries. ``failures`` counts how often a
-- message was rescheduled after a failed run, ``last_error`` says why the last
-- time. Both are cleared by reset_request (a dead-letter retry).
ALTER TABLE messages ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_error text;
-- ``starts`` counts runs that began (mark_started), so a re-run after a crash shows.
ALTER TABLE messages ADD COLUMN starts integer NOT NULL DEFAULT 0;
