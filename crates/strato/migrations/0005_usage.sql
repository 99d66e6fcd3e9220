-- Metering: append-only usage records. A row is written when a billable interval ends
-- (an instance leaves `running`, a root volume goes with its instance); intervals still open
-- are derived from the instances' current state when a bill is made. Nothing is ever
-- updated, so a crash can neither lose nor double count time.

CREATE TABLE usage_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    resource_type TEXT NOT NULL,       -- instance | volume
    usage_type    TEXT NOT NULL,       -- BoxUsage:t3.micro | EBS:VolumeUsage.gp3
    service       TEXT NOT NULL,       -- Amazon Elastic Compute Cloud - Compute | EC2 - Other
    start_time    TEXT NOT NULL,
    end_time      TEXT NOT NULL,
    unit_price    REAL NOT NULL,       -- USD per hour (instances) or per GB-month (volumes)
    size_gb       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX usage_account ON usage_records(account_id, start_time);
