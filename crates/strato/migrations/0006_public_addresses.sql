-- Public addresses: the one an instance has now (from the pool, or an elastic IP), whether
-- it asked for one at launch (kept across stop/start), and elastic IPs.

ALTER TABLE instances ADD COLUMN public_ip TEXT;
ALTER TABLE instances ADD COLUMN wants_public_ip INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX instances_public_ip ON instances(public_ip) WHERE public_ip IS NOT NULL;

CREATE TABLE addresses (
    allocation_id   TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    public_ip       TEXT NOT NULL UNIQUE,
    instance_id     TEXT,
    association_id  TEXT,
    allocated_at    TEXT NOT NULL
);
CREATE INDEX addresses_account ON addresses(account_id);
