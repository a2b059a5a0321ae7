-- +goose Up
-- acquire_slots locks the rows of the runs it parks in the byte order of
-- their keys. Lease renewals, outcome batches and hand-backs lock the same
-- kind of rows in the order their worker sorts the keys, which is byte
-- order (Go's string comparison); acquire_slots sorted by the database's
-- collation instead, the same order only under the C collation. Under
-- another (en_US.UTF-8: "a" before "B"), a worker parking the new copies of
-- replaced or redelivered keys could deadlock with one recording the old
-- copies of the same keys, and PostgreSQL would fail one of the two after
-- deadlock_timeout. Only the ORDER BY changes, so the function is rewritten
-- from its own definition.
-- +goose StatementBegin
DO $$
DECLARE
    v_def text := pg_get_functiondef(
        'shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)'::regprocedure);
BEGIN
    IF position('ORDER BY t.key' || chr(10) in v_def) = 0 THEN
        RAISE EXCEPTION 'shadows.acquire_slots does not lock parked rows as migration 00009 defined it';
    END IF;
    EXECUTE replace(v_def, 'ORDER BY t.key' || chr(10), 'ORDER BY t.key COLLATE "C"' || chr(10));
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    v_def text := pg_get_functiondef(
        'shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)'::regprocedure);
BEGIN
    EXECUTE replace(v_def, 'ORDER BY t.key COLLATE "C"' || chr(10), 'ORDER BY t.key' || chr(10));
END
$$;
-- +goose StatementEnd
