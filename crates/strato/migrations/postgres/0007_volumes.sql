-- PostgreSQL twin of ../0007_volumes.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- EBS volumes: qcow2 files under DATA_DIR/volumes/, made and removed by the agent, attached
-- by hot-plug. The control plane writes the desired state (state, attach_state), the agent
-- makes it true and reports.

CREATE TABLE volumes (
    id                    TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL REFERENCES accounts(id),
    availability_zone     TEXT NOT NULL,
    size_gb               BIGINT NOT NULL,
    volume_type           TEXT NOT NULL,
    iops                  BIGINT,
    throughput            BIGINT,
    snapshot_id           TEXT,
    state                 TEXT NOT NULL,   -- creating | available | in-use | deleting
    created_at            TEXT NOT NULL,
    instance_id           TEXT,            -- attached (or attaching/detaching) to
    device                TEXT,
    attach_state          TEXT,            -- attaching | attached | detaching
    attach_time           TEXT,
    delete_on_termination BIGINT NOT NULL DEFAULT 0,
    force_detach          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX volumes_account ON volumes(account_id);
CREATE INDEX volumes_instance ON volumes(instance_id);
