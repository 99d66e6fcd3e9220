-- PostgreSQL twin of ../0004_quotas.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Per-account quotas.
ALTER TABLE accounts ADD COLUMN vcpu_quota BIGINT NOT NULL DEFAULT 32;
