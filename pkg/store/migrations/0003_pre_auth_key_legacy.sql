-- 0003_pre_auth_key_legacy: mark pre-auth keys imported from Headscale's
-- plaintext form.
--
-- Headscale up to 0.27 handed out pre-auth keys as 48 hex characters and kept
-- them in plaintext. The importer stores such a key like ours (prefix = its
-- first 12 characters, hash = SHA-256 of the other 36), so the row alone
-- cannot tell it from one of ours; this flag says which text its holder has,
-- so listings show "<prefix>***" instead of "hskey-auth-<prefix>-***".
ALTER TABLE pre_auth_keys ADD COLUMN legacy BOOLEAN NOT NULL DEFAULT FALSE;
