-- Launch templates: a name per account, numbered versions of launch data (JSON, by the
-- EC2 model's member names), one of them the default.
CREATE TABLE launch_templates (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    default_version INTEGER NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (account_id, name)
);
CREATE TABLE launch_template_versions (
    template_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (template_id, version)
);
