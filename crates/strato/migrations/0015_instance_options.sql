-- Instance options that Terraform and the SDKs set and read back: the CPU credit option of
-- burstable types (`standard` or `unlimited`; NULL for other types), stop protection
-- (DisableApiStop) and the EBS-optimized flag.
ALTER TABLE instances ADD COLUMN credit_spec TEXT;
ALTER TABLE instances ADD COLUMN disable_api_stop INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN ebs_optimized INTEGER NOT NULL DEFAULT 0;
