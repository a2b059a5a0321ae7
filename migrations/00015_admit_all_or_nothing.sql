-- +goose Up
-- admit decides on every rule before it writes any run's mark. A cooldown
-- was started, and a settled debounce's record removed, by a run that a
-- later rule then delayed or dropped: with a cooldown and a rate limit on
-- one task, every run the rate limit delayed came back to find its own
-- cooldown and was dropped. As docket leaves no trace of a blocked run,
-- the cooldowns, rate events and settled debounces are now written only
-- for a run every rule admits. (A debounce that blocks still records the
-- submission: that is how it settles.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.admit(p_queue text, p_task text, p_kinds text[], p_keys text[],
                                         p_seconds float8[], p_limits integer[], p_drops boolean[],
                                         OUT action text, OUT delay_seconds float8, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    i         integer;
    v_window  interval;
    v_row     shadows.debounces%ROWTYPE;
    v_count   bigint;
    v_oldest  timestamptz;
    v_settled text[] := '{}';
BEGIN
    action := 'proceed';
    delay_seconds := 0;
    FOR i IN SELECT k FROM generate_subscripts(p_keys, 1) AS k ORDER BY p_keys[k] LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_queue || '/' || p_kinds[i] || '/' || p_keys[i], 0));
    END LOOP;

    -- Debounce: the first run becomes the winner and waits for the
    -- submissions to settle; later runs only push the settling on. Those
    -- writes are the rule's own doing. A winner whose submissions settled
    -- passes; its record goes only if the run is admitted.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'debounce';
        v_window := make_interval(secs => p_seconds[i]);
        SELECT * INTO v_row FROM shadows.debounces
        WHERE queue = p_queue AND key = p_keys[i] AND expires_at > now();
        IF NOT FOUND THEN
            INSERT INTO shadows.debounces (queue, key, winner, last_seen, expires_at)
            VALUES (p_queue, p_keys[i], p_task, now(), now() + 10 * v_window)
            ON CONFLICT (queue, key) DO UPDATE
            SET winner = excluded.winner, last_seen = excluded.last_seen, expires_at = excluded.expires_at;
            action := 'reschedule';
            delay_seconds := p_seconds[i];
            reason := 'debounce ' || p_keys[i];
            RETURN;
        ELSIF v_row.winner <> p_task THEN
            UPDATE shadows.debounces SET last_seen = now(), expires_at = now() + 10 * v_window
            WHERE queue = p_queue AND key = p_keys[i];
            action := 'drop';
            reason := 'debounce ' || p_keys[i];
            RETURN;
        ELSIF now() - v_row.last_seen < v_window THEN
            action := 'reschedule';
            delay_seconds := extract(epoch FROM (v_row.last_seen + v_window - now()));
            reason := 'debounce ' || p_keys[i];
            RETURN;
        END IF;
        v_settled := v_settled || p_keys[i];
    END LOOP;

    -- Cooldown: a run proceeds only if none started within the window.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'cooldown';
        IF EXISTS (SELECT 1 FROM shadows.cooldowns
                   WHERE queue = p_queue AND key = p_keys[i] AND expires_at > now()) THEN
            action := 'drop';
            reason := 'cooldown ' || p_keys[i];
            RETURN;
        END IF;
    END LOOP;

    -- Rate limits.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'ratelimit';
        v_window := make_interval(secs => p_seconds[i]);
        DELETE FROM shadows.rate_events WHERE queue = p_queue AND key = p_keys[i] AND at <= now() - v_window;
        SELECT count(*), min(at) INTO v_count, v_oldest FROM shadows.rate_events
        WHERE queue = p_queue AND key = p_keys[i];
        IF v_count >= p_limits[i] THEN
            reason := 'rate limit ' || p_keys[i];
            IF p_drops[i] THEN
                action := 'drop';
            ELSE
                action := 'reschedule';
                delay_seconds := greatest(extract(epoch FROM (v_oldest + v_window - now())), 0.001);
            END IF;
            RETURN;
        END IF;
    END LOOP;

    -- Admitted by every rule: only now does the run leave its marks.
    DELETE FROM shadows.debounces WHERE queue = p_queue AND key = ANY (v_settled);
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_kinds[i] = 'cooldown' THEN
            INSERT INTO shadows.cooldowns AS c (queue, key, expires_at)
            VALUES (p_queue, p_keys[i], now() + make_interval(secs => p_seconds[i]))
            ON CONFLICT (queue, key) DO UPDATE SET expires_at = excluded.expires_at;
        ELSIF p_kinds[i] = 'ratelimit' THEN
            INSERT INTO shadows.rate_events (queue, key, task_key) VALUES (p_queue, p_keys[i], p_task);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.admit(p_queue text, p_task text, p_kinds text[], p_keys text[],
                              p_seconds float8[], p_limits integer[], p_drops boolean[],
                              OUT action text, OUT delay_seconds float8, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    i        integer;
    v_window interval;
    v_row    shadows.debounces%ROWTYPE;
    v_count  bigint;
    v_oldest timestamptz;
BEGIN
    action := 'proceed';
    delay_seconds := 0;
    FOR i IN SELECT k FROM generate_subscripts(p_keys, 1) AS k ORDER BY p_keys[k] LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_queue || '/' || p_kinds[i] || '/' || p_keys[i], 0));
    END LOOP;

    -- Debounce: the first run becomes the winner and waits for the
    -- submissions to settle; later runs only push the settling on.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'debounce';
        v_window := make_interval(secs => p_seconds[i]);
        SELECT * INTO v_row FROM shadows.debounces
        WHERE queue = p_queue AND key = p_keys[i] AND expires_at > now();
        IF NOT FOUND THEN
            INSERT INTO shadows.debounces (queue, key, winner, last_seen, expires_at)
            VALUES (p_queue, p_keys[i], p_task, now(), now() + 10 * v_window)
            ON CONFLICT (queue, key) DO UPDATE
            SET winner = excluded.winner, last_seen = excluded.last_seen, expires_at = excluded.expires_at;
            action := 'reschedule';
            delay_seconds := p_seconds[i];
            reason := 'debounce ' || p_keys[i];
            RETURN;
        ELSIF v_row.winner <> p_task THEN
            UPDATE shadows.debounces SET last_seen = now(), expires_at = now() + 10 * v_window
            WHERE queue = p_queue AND key = p_keys[i];
            action := 'drop';
            reason := 'debounce ' || p_keys[i];
            RETURN;
        ELSIF now() - v_row.last_seen < v_window THEN
            action := 'reschedule';
            delay_seconds := extract(epoch FROM (v_row.last_seen + v_window - now()));
            reason := 'debounce ' || p_keys[i];
            RETURN;
        END IF;
        DELETE FROM shadows.debounces WHERE queue = p_queue AND key = p_keys[i];
    END LOOP;

    -- Cooldown: a run proceeds only if none started within the window.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'cooldown';
        INSERT INTO shadows.cooldowns AS c (queue, key, expires_at)
        VALUES (p_queue, p_keys[i], now() + make_interval(secs => p_seconds[i]))
        ON CONFLICT (queue, key) DO UPDATE SET expires_at = excluded.expires_at
        WHERE c.expires_at <= now();
        IF NOT FOUND THEN
            action := 'drop';
            reason := 'cooldown ' || p_keys[i];
            RETURN;
        END IF;
    END LOOP;

    -- Rate limits: all are checked before any run is recorded.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'ratelimit';
        v_window := make_interval(secs => p_seconds[i]);
        DELETE FROM shadows.rate_events WHERE queue = p_queue AND key = p_keys[i] AND at <= now() - v_window;
        SELECT count(*), min(at) INTO v_count, v_oldest FROM shadows.rate_events
        WHERE queue = p_queue AND key = p_keys[i];
        IF v_count >= p_limits[i] THEN
            reason := 'rate limit ' || p_keys[i];
            IF p_drops[i] THEN
                action := 'drop';
            ELSE
                action := 'reschedule';
                delay_seconds := greatest(extract(epoch FROM (v_oldest + v_window - now())), 0.001);
            END IF;
            RETURN;
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        CONTINUE WHEN p_kinds[i] <> 'ratelimit';
        INSERT INTO shadows.rate_events (queue, key, task_key) VALUES (p_queue, p_keys[i], p_task);
    END LOOP;
END
$$;
-- +goose StatementEnd
