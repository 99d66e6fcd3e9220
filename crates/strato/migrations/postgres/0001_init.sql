-- PostgreSQL twin of ../0001_init.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Strato's control-plane schema, version 1: accounts and the resources that need no VM.
-- Every resource row carries its account_id; every read is scoped by it.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,          -- 12 digits
    name       TEXT NOT NULL UNIQUE,
    read_only  BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE access_keys (
    access_key_id TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    secret        TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE key_pairs (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL,
    key_type    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,            -- OpenSSH form, for the instance metadata
    created_at  TEXT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE vpcs (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts(id),
    cidr                 TEXT NOT NULL,
    is_default           BIGINT NOT NULL,
    instance_tenancy     TEXT NOT NULL,
    enable_dns_support   BIGINT NOT NULL DEFAULT 1,
    enable_dns_hostnames BIGINT NOT NULL DEFAULT 0,
    created_at           TEXT NOT NULL
);
CREATE INDEX vpcs_account ON vpcs(account_id);

CREATE TABLE subnets (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts(id),
    vpc_id              TEXT NOT NULL REFERENCES vpcs(id),
    cidr                TEXT NOT NULL,
    availability_zone   TEXT NOT NULL,
    is_default          BIGINT NOT NULL,
    map_public_ip       BIGINT NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE INDEX subnets_account ON subnets(account_id);

CREATE TABLE security_groups (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    vpc_id      TEXT NOT NULL REFERENCES vpcs(id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (vpc_id, name)
);
CREATE INDEX security_groups_account ON security_groups(account_id);

CREATE TABLE security_group_rules (
    id               TEXT PRIMARY KEY,
    group_id         TEXT NOT NULL REFERENCES security_groups(id),
    account_id       TEXT NOT NULL,
    is_egress        BIGINT NOT NULL,
    protocol         TEXT NOT NULL,       -- "-1", "tcp", "udp", "icmp", "icmpv6" or a number
    from_port        BIGINT,
    to_port          BIGINT,
    cidr_ipv4        TEXT,
    cidr_ipv6        TEXT,
    ref_group_id     TEXT,               -- a group this rule names (maybe another account's)
    ref_account_id   TEXT,
    description      TEXT,
    position         BIGINT NOT NULL    -- insertion order, for stable listings
);
CREATE INDEX security_group_rules_group ON security_group_rules(group_id);
CREATE INDEX security_group_rules_account ON security_group_rules(account_id);
CREATE INDEX security_group_rules_ref ON security_group_rules(ref_group_id);

CREATE TABLE tags (
    resource_id   TEXT NOT NULL,
    key           TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (resource_id, key)
);
CREATE INDEX tags_account ON tags(account_id);
