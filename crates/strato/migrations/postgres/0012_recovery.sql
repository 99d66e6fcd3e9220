-- PostgreSQL twin of ../0012_recovery.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Automatic recovery (EC2's MaintenanceOptions.AutoRecovery): an instance whose host died is
-- started again on another host of its zone (1, `default`) or stopped with a state reason
-- (0, `disabled`).
ALTER TABLE instances ADD COLUMN auto_recovery BIGINT NOT NULL DEFAULT 1;

-- Leases: work that one `strato serve` of those sharing a database must do at a time (the
-- host monitor). A holder renews its lease before it expires; another may take it after.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
