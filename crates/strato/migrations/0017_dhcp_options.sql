-- DHCP options sets: what a VPC's DHCP server hands its instances (DNS servers, domain
-- name, NTP servers), as JSON [[key, [values]]...]; a VPC without one uses the default
-- (the VPC's own DNS at its base address + 2, the region's internal domain).
CREATE TABLE dhcp_options (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL
);
ALTER TABLE vpcs ADD COLUMN dhcp_options_id TEXT;
