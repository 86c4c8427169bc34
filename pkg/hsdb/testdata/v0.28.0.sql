-- A Headscale 0.28.0 database created by that release (only the migration ids
-- from 202501221827 on), written for the tests (not by Headscale): pre-auth
-- keys with prefix and bcrypt hash beside a legacy plaintext one, tags in
-- nodes.tags (0.28 merged allowed request tags there; node 1's request for
-- tag:other is not applied again), tagged nodes still with a user.
CREATE TABLE migrations(id text,PRIMARY KEY(id));
INSERT INTO migrations VALUES('202501221827');
INSERT INTO migrations VALUES('202501311657');
INSERT INTO migrations VALUES('202502070949');
INSERT INTO migrations VALUES('202502131714');
INSERT INTO migrations VALUES('202502171819');
INSERT INTO migrations VALUES('202505091439');
INSERT INTO migrations VALUES('202505141324');
INSERT INTO migrations VALUES('202507021200');
INSERT INTO migrations VALUES('202510311551');
INSERT INTO migrations VALUES('202511101554-drop-old-idx');
INSERT INTO migrations VALUES('202511011637-preauthkey-bcrypt');
INSERT INTO migrations VALUES('202511122344-remove-newline-index');
INSERT INTO migrations VALUES('202511131445-node-forced-tags-to-tags');
INSERT INTO migrations VALUES('202601121700-migrate-hostinfo-request-tags');
CREATE TABLE users(
  id integer PRIMARY KEY AUTOINCREMENT,
  name text,
  display_name text,
  email text,
  provider_identifier text,
  provider text,
  profile_pic_url text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
CREATE TABLE pre_auth_keys(
  id integer PRIMARY KEY AUTOINCREMENT,
  key text,
  prefix text,
  hash blob,
  user_id integer,
  reusable numeric,
  ephemeral numeric DEFAULT false,
  used numeric DEFAULT false,
  tags text,
  expiration datetime,
  created_at datetime
);
CREATE TABLE api_keys(
  id integer PRIMARY KEY AUTOINCREMENT,
  prefix text,
  hash blob,
  expiration datetime,
  last_seen datetime,
  created_at datetime
);
CREATE TABLE nodes(
  id integer PRIMARY KEY AUTOINCREMENT,
  machine_key text,
  node_key text,
  disco_key text,
  endpoints text,
  host_info text,
  ipv4 text,
  ipv6 text,
  hostname text,
  given_name varchar(63),
  user_id integer,
  register_method text,
  tags text,
  auth_key_id integer,
  last_seen datetime,
  expiry datetime,
  approved_routes text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
CREATE TABLE policies(
  id integer PRIMARY KEY AUTOINCREMENT,
  data text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
INSERT INTO users VALUES(1,'erin','Erin','erin@example.org',NULL,'','','2026-01-20 10:00:00.000000001+00:00','2026-01-20 10:00:00+00:00',NULL);
INSERT INTO pre_auth_keys VALUES(1,NULL,'Ab-cD_ef0123',X'243261243034247264507435337376356c4b4a57644b5a332f48477375737a6b767649384474586c70796e46592f4c504431304433556f5957786c75',NULL,1,0,0,'["tag:db"]','2099-01-01 00:00:00+00:00','2026-01-20 11:00:00+00:00');
INSERT INTO pre_auth_keys VALUES(2,'00112233445566778899aabbccddeeff0011223344556677',NULL,NULL,1,0,1,0,'[]',NULL,'2026-01-20 11:00:00+00:00');
INSERT INTO api_keys VALUES(1,'Zy_x-Wv98765',X'2432612430342431773238383778564a5430656e4861634f4353466c4f326378486e4b576872503070552f684e30415537666a774c4569626b563561','2099-01-01 00:00:00+00:00',NULL,'2026-01-20 12:00:00+00:00');
INSERT INTO nodes VALUES(1,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','','[]','{"RequestTags":["tag:other"]}','100.64.0.1','fd7a:115c:a1e0::1','db-server','db-server',1,'authkey','["tag:db"]',1,'2026-01-21 10:00:00+00:00','0001-01-01 00:00:00+00:00','[]','2026-01-20 11:05:00+00:00','2026-01-21 10:00:00+00:00',NULL);
INSERT INTO nodes VALUES(2,'mkey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','nodekey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','','[]','{}','100.64.0.2','fd7a:115c:a1e0::2','erin-laptop','erin-laptop',1,'authkey','[]',2,'2026-01-21 10:00:00+00:00','0001-01-01 00:00:00+00:00',NULL,'2026-01-20 11:06:00+00:00','2026-01-21 10:00:00+00:00',NULL);
INSERT INTO policies VALUES(1,'{"tagOwners": {"tag:db": ["erin@"], "tag:other": ["erin@"]}, "acls": [{"action": "accept", "src": ["erin@"], "dst": ["tag:db:5432"]}]}','2026-01-20 12:00:00+00:00','2026-01-20 12:00:00+00:00',NULL);
