-- Portal sessions logged out before their expiry. The session cookie is signed and holds no
-- state, so logging out must be remembered where every API worker looks: a process's memory
-- served only that worker, and a saved copy of the cookie worked on the others until it
-- expired. A row is forgotten once its session has expired (the cookie is refused anyway).

CREATE TABLE portal_ended_sessions (
    session_id text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX portal_ended_sessions_expiry_idx ON portal_ended_sessions (expires_at);
