-- EBS volumes: qcow2 files under DATA_DIR/volumes/, made and removed by the agent, attached
-- by hot-plug. The control plane writes the desired state (state, attach_state), the agent
-- makes it true and reports.

CREATE TABLE volumes (
    id                    TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL REFERENCES accounts(id),
    availability_zone     TEXT NOT NULL,
    size_gb               INTEGER NOT NULL,
    volume_type           TEXT NOT NULL,
    iops                  INTEGER,
    throughput            INTEGER,
    snapshot_id           TEXT,
    state                 TEXT NOT NULL,   -- creating | available | in-use | deleting
    created_at            TEXT NOT NULL,
    instance_id           TEXT,            -- attached (or attaching/detaching) to
    device                TEXT,
    attach_state          TEXT,            -- attaching | attached | detaching
    attach_time           TEXT,
    delete_on_termination INTEGER NOT NULL DEFAULT 0,
    force_detach          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX volumes_account ON volumes(account_id);
CREATE INDEX volumes_instance ON volumes(instance_id);
