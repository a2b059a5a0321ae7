-- +goose Up
-- The slot functions look slots up by plain index scans only, never by
-- bitmap scans. A slot row lives for one run, so a busy key leaves behind
-- a dead row per finished run until VACUUM reaches the table. A plain index
-- scan marks the index entries of rows it finds dead to everyone, and later
-- probes skip them; a bitmap scan never does, so every probe of a key
-- visited every dead slot the key ever had since the last VACUUM. The
-- planner chose bitmap scans for the per-key slot counts in take_slots:
-- measured with one connection asking for 590 slots over 1,000 keys per
-- call and releasing them after, the call grew from 4.8 ms to 21 ms within
-- 340 calls (600,000 dead slots, autovacuum not yet there); with plain index
-- scans it stayed at 5.8–6.3 ms over 510 calls.
ALTER FUNCTION shadows.take_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)
    SET enable_bitmapscan = off;
ALTER FUNCTION shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)
    SET enable_bitmapscan = off;
ALTER FUNCTION shadows.release_slots(text, text[], bigint[]) SET enable_bitmapscan = off;
ALTER FUNCTION shadows.renew_slots(text, text[], bigint[], float8) SET enable_bitmapscan = off;
ALTER FUNCTION shadows.wake_keys(text, text[]) SET enable_bitmapscan = off;
ALTER FUNCTION shadows.wake_freed(text, text[]) SET enable_bitmapscan = off;
ALTER FUNCTION shadows.wake_waiters(text) SET enable_bitmapscan = off;
ALTER FUNCTION shadows.unclaim_runs(text, text, text[], bigint[], timestamptz[], float8, text[], bigint[])
    SET enable_bitmapscan = off;

-- +goose Down
ALTER FUNCTION shadows.take_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)
    RESET enable_bitmapscan;
ALTER FUNCTION shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)
    RESET enable_bitmapscan;
ALTER FUNCTION shadows.release_slots(text, text[], bigint[]) RESET enable_bitmapscan;
ALTER FUNCTION shadows.renew_slots(text, text[], bigint[], float8) RESET enable_bitmapscan;
ALTER FUNCTION shadows.wake_keys(text, text[]) RESET enable_bitmapscan;
ALTER FUNCTION shadows.wake_freed(text, text[]) RESET enable_bitmapscan;
ALTER FUNCTION shadows.wake_waiters(text) RESET enable_bitmapscan;
ALTER FUNCTION shadows.unclaim_runs(text, text, text[], bigint[], timestamptz[], float8, text[], bigint[])
    RESET enable_bitmapscan;
