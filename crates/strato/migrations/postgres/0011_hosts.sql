-- PostgreSQL twin of ../0011_hosts.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Hosts: the machines that run instances. Every `strato serve` registers its in-process agent
-- as one (its id kept in DATA_DIR/host-id) and heartbeats; a host is live while its last
-- heartbeat is recent. `availability_zone` NULL: the host serves every zone of the region
-- (one machine as a whole cloud); otherwise only that zone.
CREATE TABLE hosts (
    id                TEXT PRIMARY KEY,   -- h-<17 hex>
    name              TEXT NOT NULL,
    availability_zone TEXT,
    vcpus             BIGINT NOT NULL,
    memory_mib        BIGINT NOT NULL,
    vcpu_overcommit   DOUBLE PRECISION NOT NULL,      -- guest vCPUs the host promises per core
    memory_overcommit DOUBLE PRECISION NOT NULL,      -- guest memory the host promises per byte of RAM
    registered_at     TEXT NOT NULL,
    heartbeat_at      TEXT NOT NULL
);

-- The host the scheduler placed an instance on (where it runs, or last ran while stopped).
-- Instances launched before hosts existed have none; the first host to register that serves
-- their zone takes them.
ALTER TABLE instances ADD COLUMN host_id TEXT;
CREATE INDEX instances_host ON instances(host_id);
