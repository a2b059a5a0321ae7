-- +goose Up
-- The trace context of the code that added a task (W3C traceparent and
-- tracestate as a JSON object), so a worker's span for the run links to it.
ALTER TABLE shadows.tasks ADD COLUMN trace_context jsonb;

-- +goose Down
ALTER TABLE shadows.tasks DROP COLUMN trace_context;
