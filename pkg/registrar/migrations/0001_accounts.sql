-- Accounts, their public keys, and the change feed of the registrar.
-- Applied once, inside a transaction, by the first registrar that starts.

-- One row of counters. Writers lock it (UPDATE ... RETURNING) inside their
-- transaction, so twin ids and change sequence numbers are handed out in
-- commit order and a rolled-back insert leaves no gap.
CREATE TABLE registrar_counters (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_twin_id bigint NOT NULL CHECK (last_twin_id BETWEEN 0 AND 4294967295),
    last_seq     bigint NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO registrar_counters (singleton, last_twin_id, last_seq) VALUES (true, 0, 0);

CREATE TABLE registrar_accounts (
    twin_id    bigint PRIMARY KEY CHECK (twin_id BETWEEN 1 AND 4294967295),
    public_key bytea NOT NULL CONSTRAINT registrar_accounts_public_key_key UNIQUE,
    relays     text[] NOT NULL,
    e2e_key    bytea,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    seq        bigint NOT NULL
);

-- The change feed: one row per twin, at the sequence number of its latest
-- create or update.
CREATE TABLE registrar_changes (
    seq     bigint PRIMARY KEY,
    twin_id bigint NOT NULL UNIQUE REFERENCES registrar_accounts (twin_id)
);
