-- retry-kafka's PostgreSQL retry store, schema version 1.
--
-- The `postgres` backend runs this file at start, in one transaction under an advisory lock,
-- unless `retry_kafka_schema` already holds version 1 (then it changes nothing, so a user with
-- only SELECT, INSERT, UPDATE and DELETE on the tables can run the app). To create the tables
-- as the schema's owner instead and run the app as a user without CREATE:
--
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f postgres.sql
--   GRANT SELECT, INSERT, UPDATE, DELETE ON retry_kafka_schema, retry_kafka_partitions,
--         retry_kafka_records TO app_user;
--
-- Every statement is idempotent. Names are unqualified: the tables go to the first schema of
-- the connection's search_path (`public` by default; `?options=-csearch_path%3Dother` in the URL
-- picks another).

CREATE TABLE IF NOT EXISTS retry_kafka_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per topic partition: the offset the next record written to it gets. A topic's
-- partition count is its number of rows here.
CREATE TABLE IF NOT EXISTS retry_kafka_partitions (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, partition)
);

-- One row per retry, dead letter or parked entry.
CREATE TABLE IF NOT EXISTS retry_kafka_records (
    topic            text    NOT NULL,  -- orders.billing.retry.1, orders.billing.dlq, ...
    partition        integer NOT NULL,  -- the main topic's partition, kept on every hop
    "offset"         bigint  NOT NULL,  -- per (topic, partition), from retry_kafka_partitions
    level            integer,           -- the retry level; NULL on dead letters and parked entries
    -- waiting: a retry not handled yet (due or not); handled: done, deleted after the
    -- retention period; dead_letter / parked: kept until an operator deletes or replays it
    state            text    NOT NULL CHECK (state IN ('waiting', 'handled', 'dead_letter', 'parked')),
    written_at_ms    bigint  NOT NULL,  -- epoch ms
    due_at_ms        bigint  NOT NULL,  -- rk-due-at; the write time where there is none
    key              bytea,
    payload          bytea,
    header_names     text[]  NOT NULL,  -- every header, rk-* included, in order
    header_values    bytea[] NOT NULL,
    -- From the rk-* headers, for queries and for the unique key below.
    source_topic     text,              -- rk-original-topic
    source_partition integer,           -- rk-original-partition
    source_offset    bigint,            -- rk-original-offset
    "group"          text,              -- rk-group
    attempts         integer,           -- rk-attempts
    replays          integer NOT NULL DEFAULT 0,  -- rk-replays
    error_kind       text,              -- rk-error-kind
    error_message    text,              -- rk-error-message
    -- A worker's lease on a row it took: another worker takes the row only once it expires
    -- (the worker died), so a row lock is never held across a handler call.
    claimed_by       text,
    claimed_until_ms bigint,
    handled_at_ms    bigint,
    PRIMARY KEY (topic, partition, "offset"),
    -- A hand-off repeated after a crash (the same failure of the same message, written again)
    -- finds this row and writes nothing. Rows without rk-* headers (NULLs) never collide.
    CONSTRAINT retry_kafka_records_once
        UNIQUE (topic, source_topic, source_partition, source_offset, "group", attempts, replays)
);

-- What a level's workers look for: waiting rows of a topic in due order.
CREATE INDEX IF NOT EXISTS retry_kafka_records_waiting
    ON retry_kafka_records (topic, due_at_ms) WHERE state = 'waiting';
-- What the retention sweep deletes.
CREATE INDEX IF NOT EXISTS retry_kafka_records_handled
    ON retry_kafka_records (topic, handled_at_ms) WHERE state = 'handled';

INSERT INTO retry_kafka_schema (version) VALUES (1) ON CONFLICT DO NOTHING;
