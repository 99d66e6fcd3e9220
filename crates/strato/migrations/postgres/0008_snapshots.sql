-- PostgreSQL twin of ../0008_snapshots.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- EBS snapshots: independent qcow2 files under DATA_DIR/snapshots/ (deleting a volume never
-- breaks a snapshot; volumes made from a snapshot are copies). Made by the agent: a
-- point-in-time backup job when the volume is in a running VM, a file copy otherwise.

CREATE TABLE snapshots (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    volume_id       TEXT NOT NULL,         -- the source volume (may be gone)
    source_snapshot TEXT,                  -- CopySnapshot's source
    volume_size_gb  BIGINT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,         -- pending | completed | error
    started_at      TEXT NOT NULL,
    instance_id     TEXT,                  -- CreateImage: the instance whose root disk it copies
    pause_vm        BIGINT NOT NULL DEFAULT 0  -- CreateImage without NoReboot: pause while copying
);
CREATE INDEX snapshots_account ON snapshots(account_id);

-- createVolumePermission: an account id, or 'all' (public).
CREATE TABLE snapshot_permissions (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    grantee     TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, grantee)
);
