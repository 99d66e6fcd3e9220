-- PostgreSQL twin of ../0005_usage.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Metering: append-only usage records. A row is written when a billable interval ends
-- (an instance leaves `running`, a root volume goes with its instance); intervals still open
-- are derived from the instances' current state when a bill is made. Nothing is ever
-- updated, so a crash can neither lose nor double count time.

CREATE TABLE usage_records (
    id            BIGSERIAL PRIMARY KEY,
    account_id    TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    resource_type TEXT NOT NULL,       -- instance | volume
    usage_type    TEXT NOT NULL,       -- BoxUsage:t3.micro | EBS:VolumeUsage.gp3
    service       TEXT NOT NULL,       -- Amazon Elastic Compute Cloud - Compute | EC2 - Other
    start_time    TEXT NOT NULL,
    end_time      TEXT NOT NULL,
    unit_price    DOUBLE PRECISION NOT NULL,       -- USD per hour (instances) or per GB-month (volumes)
    size_gb       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_account ON usage_records(account_id, start_time);
