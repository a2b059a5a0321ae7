-- +goose Up
-- Tasks a hold strike keeps waiting, by the strike epoch they were judged
-- under. Releasing them (a removed hold) no longer scans the queue, and the
-- workers' sweep finds, in an index that is empty while no hold is in
-- force, tasks held under strikes that have changed since: an add or claim
-- whose transaction judged a task under a hold that a restore lifted before
-- it committed left the task held, with nothing left to release it.
-- Only held rows have entries, so the hot path does not touch it.
CREATE INDEX tasks_held ON shadows.tasks (queue, strike_epoch) WHERE held;

-- +goose Down
DROP INDEX shadows.tasks_held;
