-- Hosts that join over the network (`strato agent --control-plane URL --token T`): a join
-- token, made by `strato host token` and good once until it expires, buys a host its own
-- credential, which it presents on every call. Only SHA-256 hashes are kept.
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
ALTER TABLE hosts ADD COLUMN credential_hash TEXT;
