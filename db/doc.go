// Package db is sqlc's code for the SQL in queries/, generated with
// `make generate` and checked by `make verify`. It is internal plumbing of
// the queue and worker packages, not a stable API: do not edit it by hand
// and do not import it.
package db
