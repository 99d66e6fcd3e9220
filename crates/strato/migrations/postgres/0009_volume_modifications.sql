-- PostgreSQL twin of ../0009_volume_modifications.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- ModifyVolume: the latest modification of each volume (the agent grows the file, or the
-- device in a running VM, then completes it), and where the volume's current size started
-- to be metered (a change of size or type ends one usage interval and starts another).

CREATE TABLE volume_modifications (
    volume_id         TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL,
    state             TEXT NOT NULL,     -- modifying | completed | failed
    original_size     BIGINT NOT NULL,
    target_size       BIGINT NOT NULL,
    original_type     TEXT NOT NULL,
    target_type       TEXT NOT NULL,
    original_iops     BIGINT,
    target_iops       BIGINT,
    original_throughput BIGINT,
    target_throughput BIGINT,
    start_time        TEXT NOT NULL,
    end_time          TEXT
);

ALTER TABLE volumes ADD COLUMN metered_since TEXT;
