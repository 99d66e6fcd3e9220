-- PostgreSQL twin of ../0002_images.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- Machine images (AMIs). Their files live in DATA_DIR/images/<image id>/.

CREATE TABLE images (
    id               TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL,       -- an account id, or Strato's own owner id
    owner_alias      TEXT,                -- 'strato' for the images Strato builds
    name             TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    architecture     TEXT NOT NULL,
    root_device_name TEXT NOT NULL,
    root_snapshot_id TEXT NOT NULL,
    root_size_gb     BIGINT NOT NULL,
    disk_path        TEXT NOT NULL,
    disk_format      TEXT NOT NULL,       -- raw or qcow2
    kernel_path      TEXT NOT NULL,
    initrd_path      TEXT,
    cmdline          TEXT NOT NULL,
    public           BIGINT NOT NULL,
    state            TEXT NOT NULL,
    source_image_id  TEXT,
    build_key        TEXT,
    client_token     TEXT,                -- CopyImage idempotency
    created_at       TEXT NOT NULL,
    UNIQUE (owner_id, name)
);
CREATE INDEX images_owner ON images(owner_id);

CREATE TABLE image_launch_permissions (
    image_id   TEXT NOT NULL REFERENCES images(id),
    account_id TEXT NOT NULL,
    PRIMARY KEY (image_id, account_id)
);
