-- One-time sign-in codes (`inbox dev` prints a link with one): only the code's SHA-256 is stored;
-- redeeming marks it used in the same statement, so a code works once.
CREATE TABLE IF NOT EXISTS signin_codes (
    code_hash  text PRIMARY KEY,
    org_id     text NOT NULL,
    user_id    text NOT NULL,
    role       text NOT NULL,
    name       text,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
