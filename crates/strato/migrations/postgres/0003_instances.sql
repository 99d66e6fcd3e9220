-- PostgreSQL twin of ../0003_instances.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Instances: the desired state the control plane writes, and what the agent reports.

CREATE TABLE instances (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts(id),
    reservation_id      TEXT NOT NULL,
    launch_index        BIGINT NOT NULL,
    image_id            TEXT NOT NULL,
    instance_type       TEXT NOT NULL,
    state               TEXT NOT NULL,
    state_reason_code   TEXT,
    state_reason        TEXT,
    transition_reason   TEXT NOT NULL DEFAULT '',
    key_name            TEXT,
    public_key          TEXT,
    subnet_id           TEXT NOT NULL,
    vpc_id              TEXT NOT NULL,
    availability_zone   TEXT NOT NULL,
    private_ip          TEXT NOT NULL,
    security_groups     TEXT NOT NULL,     -- JSON [[id, name], ...]
    user_data           TEXT,              -- base64, as given
    root_volume_id      TEXT NOT NULL,
    root_size_gb        BIGINT NOT NULL,
    delete_on_termination BIGINT NOT NULL,
    disable_api_termination BIGINT NOT NULL DEFAULT 0,
    shutdown_behavior   TEXT NOT NULL DEFAULT 'stop',
    tokens_required     BIGINT NOT NULL DEFAULT 0,
    force_stop          BIGINT NOT NULL DEFAULT 0,
    reboot_requested    BIGINT NOT NULL DEFAULT 0,
    status_ok           BIGINT NOT NULL DEFAULT 0,
    client_token        TEXT,
    request_hash        TEXT,
    launch_time         TEXT NOT NULL,
    state_changed_at    TEXT NOT NULL,
    generation          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX instances_account ON instances(account_id);
CREATE INDEX instances_state ON instances(state);
CREATE UNIQUE INDEX instances_client_token ON instances(account_id, client_token, launch_index);
