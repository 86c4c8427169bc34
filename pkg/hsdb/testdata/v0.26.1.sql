-- A Headscale 0.26.1 database, written for the tests (not by Headscale):
-- approved routes in nodes.approved_routes, no routes table, no policy.
-- Node 1 requests tag:web, which without a policy Headscale never applied.
CREATE TABLE `migrations` (`id` text,PRIMARY KEY (`id`));
INSERT INTO migrations VALUES('202312101416');
INSERT INTO migrations VALUES('202312101430');
INSERT INTO migrations VALUES('202402151347');
INSERT INTO migrations VALUES('2024041121742');
INSERT INTO migrations VALUES('202406021630');
INSERT INTO migrations VALUES('202409271400');
INSERT INTO migrations VALUES('202407191627');
INSERT INTO migrations VALUES('202408181235');
INSERT INTO migrations VALUES('202501221827');
INSERT INTO migrations VALUES('202501311657');
INSERT INTO migrations VALUES('202502070949');
INSERT INTO migrations VALUES('202502131714');
INSERT INTO migrations VALUES('202502171819');
INSERT INTO migrations VALUES('202505091439');
INSERT INTO migrations VALUES('202505141324');
CREATE TABLE `users` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`name` text,`display_name` text,`email` text,`provider_identifier` text,`provider` text,`profile_pic_url` text);
INSERT INTO users VALUES(4,'2025-06-01 10:00:00+00:00','2025-06-01 10:00:00+00:00',NULL,'dana','','',NULL,'','');
CREATE TABLE `pre_auth_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`key` text,`user_id` integer,`reusable` numeric,`ephemeral` numeric DEFAULT false,`used` numeric DEFAULT false,`tags` text,`created_at` datetime,`expiration` datetime);
CREATE TABLE `api_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`prefix` text,`hash` blob,`created_at` datetime,`expiration` datetime,`last_seen` datetime);
CREATE TABLE `nodes` (`id` integer PRIMARY KEY AUTOINCREMENT,`machine_key` text,`node_key` text,`disco_key` text,`endpoints` text,`host_info` text,`ipv4` text,`ipv6` text,`hostname` text,`given_name` varchar(63),`user_id` integer,`register_method` text,`forced_tags` text,`auth_key_id` integer,`last_seen` datetime,`expiry` datetime,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`approved_routes` text);
INSERT INTO nodes VALUES(10,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','','[]','{"RequestTags":["tag:web"],"RoutableIPs":["10.9.0.0/16"]}','100.64.0.10',NULL,'gateway','gateway',4,'cli','null',NULL,'2025-06-02 10:00:00+00:00','2026-06-01 10:00:00+00:00','2025-06-01 11:00:00+00:00','2025-06-02 10:00:00+00:00',NULL,'["10.9.0.0/16","10.9.0.0/16"]');
INSERT INTO nodes VALUES(11,'mkey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','nodekey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','','','','100.64.0.11',NULL,'Dana''s Phone','Dana''s Phone',4,'cli','',NULL,NULL,'0001-01-01 00:00:00+00:00','2025-06-01 11:00:00+00:00','2025-06-02 10:00:00+00:00',NULL,NULL);
CREATE TABLE `policies` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`data` text);
