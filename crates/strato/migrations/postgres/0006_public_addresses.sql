-- PostgreSQL twin of ../0006_public_addresses.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Public addresses: the one an instance has now (from the pool, or an elastic IP), whether
-- it asked for one at launch (kept across stop/start), elastic IPs, and internet gateways
-- (a VPC's instances are reachable at their public addresses only through an attached one).

ALTER TABLE instances ADD COLUMN public_ip TEXT;
ALTER TABLE instances ADD COLUMN wants_public_ip BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX instances_public_ip ON instances(public_ip) WHERE public_ip IS NOT NULL;

CREATE TABLE addresses (
    id              TEXT PRIMARY KEY,      -- eipalloc-...
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    public_ip       TEXT NOT NULL UNIQUE,
    instance_id     TEXT,
    association_id  TEXT,
    allocated_at    TEXT NOT NULL,
    idle_since      TEXT              -- not on a running instance since (metered while set)
);
CREATE INDEX addresses_account ON addresses(account_id);

CREATE TABLE internet_gateways (
    id          TEXT PRIMARY KEY,          -- igw-...
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    vpc_id      TEXT UNIQUE,               -- attached to, at most one per VPC
    created_at  TEXT NOT NULL
);
CREATE INDEX internet_gateways_account ON internet_gateways(account_id);
