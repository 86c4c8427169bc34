-- 0004_user_provider_groups: the groups an identity provider puts a user in.
--
-- At each OIDC login the provider's groups claim is stored with the user
-- (a JSON array of strings, as given, sorted and without duplicates; '[]'
-- for none and for users created with the CLI), so that a policy can name
-- them as "oidcgroup:<group>". The identity fields OIDC needs (display
-- name, e-mail, picture, provider and provider_id, the latter the issuer
-- joined with the subject as Headscale forms it) are in 0001 already.
ALTER TABLE users ADD COLUMN provider_groups TEXT NOT NULL DEFAULT '[]';

-- A login finds its user by provider identity. Not UNIQUE: a database
-- imported from an old Headscale may hold duplicates, and refusing to
-- migrate it would stop the server; the lookup takes the oldest user.
CREATE INDEX users_provider_id_idx ON users (provider, provider_id);
