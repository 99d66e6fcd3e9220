-- Per-account quotas.
ALTER TABLE accounts ADD COLUMN vcpu_quota INTEGER NOT NULL DEFAULT 32;
