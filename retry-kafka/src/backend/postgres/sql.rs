//! The statements, each one round trip and atomic on its own (no explicit transaction, so
//! statements issued on one connection pipeline). Parameters are typed where they are run.

/// Writes a record to `$1`/`$2`, unless a row of the same failure is there already (the
/// unique key), and, for a hand-off, marks its source row `$19`/`$20`/`$21` handled: both or
/// neither. Returns where the record is: the new row, or the one found.
pub(crate) const WRITE: &str = r#"
WITH existing AS (
    SELECT partition, "offset" FROM retry_kafka_records
    WHERE topic = $1 AND source_topic = $11 AND source_partition = $12 AND source_offset = $13
      AND "group" = $14 AND attempts = $15 AND replays = $16
), next AS (
    UPDATE retry_kafka_partitions SET next_offset = next_offset + 1
    WHERE topic = $1 AND partition = $2 AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING next_offset - 1 AS "offset"
), written AS (
    INSERT INTO retry_kafka_records (topic, partition, "offset", level, state, written_at_ms,
        due_at_ms, key, payload, header_names, header_values, source_topic, source_partition,
        source_offset, "group", attempts, replays, error_kind, error_message)
    SELECT $1, $2, "offset", $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18
    FROM next
    ON CONFLICT DO NOTHING
    RETURNING partition, "offset"
), source AS (
    UPDATE retry_kafka_records
    SET state = 'handled', handled_at_ms = $5, claimed_by = NULL, claimed_until_ms = NULL
    WHERE topic = $19 AND partition = $20 AND "offset" = $21 AND state = 'waiting'
      -- Only once the next hop is there: never when its partition is missing.
      AND EXISTS (SELECT 1 FROM written UNION ALL SELECT 1 FROM existing)
), notified AS (
    SELECT pg_notify('retry_kafka', $1) FROM written WHERE $4 = 'waiting'
)
SELECT partition, "offset", (SELECT count(*) FROM notified) FROM written
UNION ALL
SELECT partition, "offset", 0 FROM existing
"#;

/// Takes up to `$6` due rows of `$1` that nobody holds (no live lease, not locked by another
/// worker's claim right now), outside the held partitions `$5`, for member `$2` until `$4`.
/// Returns each row's due time, then the record's columns as [`READ`] does.
pub(crate) const CLAIM: &str = r#"
UPDATE retry_kafka_records r SET claimed_by = $2, claimed_until_ms = $4
FROM (
    SELECT partition, "offset" FROM retry_kafka_records
    WHERE topic = $1 AND state = 'waiting' AND due_at_ms <= $3
      AND (claimed_until_ms IS NULL OR claimed_until_ms <= $3)
      AND partition <> ALL($5)
    ORDER BY due_at_ms, partition, "offset"
    LIMIT $6
    FOR UPDATE SKIP LOCKED
) due
WHERE r.topic = $1 AND r.partition = due.partition AND r."offset" = due."offset"
RETURNING r.due_at_ms, r.partition, r."offset", r.written_at_ms, r.key, r.payload, r.header_names,
    r.header_values
"#;

/// When the next row of `$1` that member `$2` could claim is due (or its lease ends), outside
/// the held partitions `$3`.
pub(crate) const NEXT_DUE: &str = r#"
SELECT min(GREATEST(due_at_ms, COALESCE(claimed_until_ms, 0))) FROM retry_kafka_records
WHERE topic = $1 AND state = 'waiting' AND claimed_by IS DISTINCT FROM $2 AND partition <> ALL($3)
"#;

/// Marks rows `($2[i], $3[i])` of `$1` handled at `$4`.
pub(crate) const ACK: &str = r#"
UPDATE retry_kafka_records r
SET state = 'handled', handled_at_ms = $4, claimed_by = NULL, claimed_until_ms = NULL
FROM unnest($2::int4[], $3::int8[]) AS done(partition, "offset")
WHERE r.topic = $1 AND r.partition = done.partition AND r."offset" = done."offset"
  AND r.state = 'waiting'
"#;

/// Extends member `$2`'s leases on `$1` to `$3`.
pub(crate) const RENEW: &str =
    "UPDATE retry_kafka_records SET claimed_until_ms = $3 WHERE topic = $1 AND claimed_by = $2 AND state = 'waiting'";

/// Gives member `$2`'s rows of `$1` back at once (it is leaving).
pub(crate) const RELEASE: &str = "UPDATE retry_kafka_records SET claimed_by = NULL, claimed_until_ms = NULL \
                                  WHERE topic = $1 AND claimed_by = $2 AND state = 'waiting'";

/// Gives member `$2`'s rows of `$1` in partitions `$3` back at once (a follower gives the
/// partitions up).
pub(crate) const RELEASE_PARTITIONS: &str =
    "UPDATE retry_kafka_records SET claimed_by = NULL, claimed_until_ms = NULL \
                                             WHERE topic = $1 AND claimed_by = $2 AND state = 'waiting' \
                                             AND partition = ANY($3)";

/// Rows of `$1` in partitions `$2` not handled yet, in partition and offset order.
pub(crate) const WAITING: &str = r#"
SELECT partition, "offset", written_at_ms, key, payload, header_names, header_values
FROM retry_kafka_records
WHERE topic = $1 AND state = 'waiting' AND partition = ANY($2)
ORDER BY partition, "offset"
"#;

/// Deletes the rows of `$1` handled before `$2`.
pub(crate) const SWEEP: &str =
    "DELETE FROM retry_kafka_records WHERE topic = $1 AND state = 'handled' AND handled_at_ms < $2";

/// The partition count of `$1` (0: no such topic).
pub(crate) const PARTITIONS: &str = "SELECT count(*)::int4 FROM retry_kafka_partitions WHERE topic = $1";

/// Creates `$1` with partitions `0..$2`, unless it exists.
pub(crate) const CREATE_TOPIC: &str = r#"
INSERT INTO retry_kafka_partitions (topic, partition)
SELECT $1, p FROM generate_series(0, $2 - 1) p
WHERE NOT EXISTS (SELECT 1 FROM retry_kafka_partitions WHERE topic = $1)
ON CONFLICT DO NOTHING
"#;

/// Adds partitions up to `$2` to `$1` (a record written to a partition it did not have yet).
pub(crate) const GROW_TOPIC: &str = r#"
INSERT INTO retry_kafka_partitions (topic, partition)
SELECT $1, p FROM generate_series(0, $2 - 1) p
ON CONFLICT DO NOTHING
"#;

/// Rows of `$1` not handled yet.
pub(crate) const LAG: &str =
    "SELECT count(*) FROM retry_kafka_records WHERE topic = $1 AND state = 'waiting'";

/// The next offset of each partition of `$1`.
pub(crate) const END_OFFSETS: &str =
    "SELECT next_offset FROM retry_kafka_partitions WHERE topic = $1 ORDER BY partition";

/// Per partition of `$1`, the offset of its oldest row not handled yet, or its end offset.
pub(crate) const HANDLED_UP_TO: &str = r#"
SELECT COALESCE(min(r."offset"), p.next_offset) FROM retry_kafka_partitions p
LEFT JOIN retry_kafka_records r ON r.topic = p.topic AND r.partition = p.partition AND r.state = 'waiting'
WHERE p.topic = $1
GROUP BY p.partition, p.next_offset
ORDER BY p.partition
"#;

/// The rows of `$1` in partition and offset order, from offset `$2[p + 1]` of partition `p`.
pub(crate) const READ: &str = r#"
SELECT partition, "offset", written_at_ms, key, payload, header_names, header_values
FROM retry_kafka_records
WHERE topic = $1 AND "offset" >= COALESCE(($2::int8[])[partition + 1], 0)
ORDER BY partition, "offset"
"#;

/// One page of [`READ`]'s rows: a partition's, from an offset, before another, at most so many.
pub(crate) const READ_PAGE: &str = r#"
SELECT partition, "offset", written_at_ms, key, payload, header_names, header_values
FROM retry_kafka_records
WHERE topic = $1 AND partition = $2 AND "offset" >= $3 AND "offset" < $4
ORDER BY "offset"
LIMIT $5
"#;

/// Whether the schema is there already (fails with 42P01 when it is not).
pub(crate) const SCHEMA_VERSION: &str = "SELECT version FROM retry_kafka_schema WHERE version = 1";

/// Who creates the tables, and where.
pub(crate) const WHO: &str = "SELECT current_user::text, COALESCE(current_schema(), 'public')::text";

/// The schema, applied in one transaction while holding an advisory lock, so instances that
/// start together do not race on `CREATE TABLE IF NOT EXISTS`.
pub(crate) const MIGRATION: &str = include_str!("../../../sql/postgres.sql");

/// The advisory lock key of the migration (the ASCII of "rk-pgsql").
pub(crate) const MIGRATION_LOCK: i64 = 0x726b_2d70_6773_716c;

/// Query parameters with their types, for `query_typed`: `params![(topic, Type::TEXT)]`.
macro_rules! params {
    ($(($value:expr, $ty:expr)),* $(,)?) => {
        &[$((&$value as &(dyn tokio_postgres::types::ToSql + Sync), $ty)),*]
    };
}
pub(crate) use params;
