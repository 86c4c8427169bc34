-- A Headscale 0.25.1 database, written for the tests (not by Headscale):
-- user columns of 0.24, pre-auth key tags as JSON, routes still in their
-- table. Rows: users 1 alice (local) and 2 alice (OIDC, same name);
-- nodes 1 and 2 share a machine key (2 was seen later), 3 has an
-- unreadable node key, 4 lost its pre-auth key.
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
CREATE TABLE `users` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`name` text,`display_name` text,`email` text,`provider_identifier` text,`provider` text,`profile_pic_url` text);
CREATE UNIQUE INDEX idx_provider_identifier ON users(provider_identifier) WHERE provider_identifier IS NOT NULL;
CREATE UNIQUE INDEX idx_name_no_provider_identifier ON users(name) WHERE provider_identifier IS NULL;
INSERT INTO users VALUES(1,'2025-01-01 10:00:00+00:00','2025-01-01 10:00:00+00:00',NULL,'alice','Alice','alice@example.com',NULL,'','');
INSERT INTO users VALUES(2,'2025-01-02 10:00:00+00:00','2025-01-02 10:00:00+00:00',NULL,'alice','Alice (SSO)','alice@sso.example.com','https://sso.example.com/alice','oidc','https://sso.example.com/alice.png');
CREATE TABLE `pre_auth_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`key` text,`user_id` integer,`reusable` numeric,`ephemeral` numeric DEFAULT false,`used` numeric DEFAULT false,`tags` text,`created_at` datetime,`expiration` datetime,CONSTRAINT `fk_pre_auth_keys_user` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON DELETE SET NULL);
INSERT INTO pre_auth_keys VALUES(1,'aaaaaaaaaaaabbbbbbbbbbbbccccccccccccdddddddddddd',1,0,0,1,'["tag:web","bogus"]','2025-01-01 11:00:00+00:00','2025-01-02 11:00:00+00:00');
CREATE TABLE `api_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`prefix` text,`hash` blob,`created_at` datetime,`expiration` datetime,`last_seen` datetime);
CREATE TABLE `nodes` (`id` integer PRIMARY KEY AUTOINCREMENT,`machine_key` text,`node_key` text,`disco_key` text,`endpoints` text,`host_info` text,`ipv4` text,`ipv6` text,`hostname` text,`given_name` varchar(63),`user_id` integer,`register_method` text,`forced_tags` text,`auth_key_id` integer,`last_seen` datetime,`expiry` datetime,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime);
INSERT INTO nodes VALUES(1,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','','[]','{}','100.64.0.1','fd7a:115c:a1e0::1','old-laptop','old-laptop',1,'authkey','[]',NULL,'2025-01-01 12:00:00+00:00','0001-01-01 00:00:00+00:00','2025-01-01 11:05:00+00:00','2025-01-01 12:00:00+00:00',NULL);
INSERT INTO nodes VALUES(2,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','','[]','{}','100.64.0.2','fd7a:115c:a1e0::2','laptop','laptop',2,'oidc','[]',NULL,'2025-01-03 12:00:00+00:00','0001-01-01 00:00:00+00:00','2025-01-03 11:05:00+00:00','2025-01-03 12:00:00+00:00',NULL);
INSERT INTO nodes VALUES(3,'mkey:7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193','nodekey:not-hex','','[]','{}','100.64.0.3','fd7a:115c:a1e0::3','broken','broken',1,'cli','[]',NULL,NULL,NULL,'2025-01-01 11:05:00+00:00','2025-01-01 11:05:00+00:00',NULL);
INSERT INTO nodes VALUES(4,'mkey:4814d92093ac8a0f4a2163ab87dee509ba306a58f5888be0edcb2fcd0712028b','nodekey:4814d92093ac8a0f4a2163ab87dee509ba306a58f5888be0edcb2fcd0712028b','','[]','{}','100.64.0.4','fd7a:115c:a1e0::4','web','web',1,'authkey','["tag:web"]',7,NULL,NULL,'2025-01-01 11:05:00+00:00','2025-01-01 11:05:00+00:00',NULL);
CREATE TABLE `routes` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`node_id` integer,`prefix` text,`advertised` numeric,`enabled` numeric,`is_primary` numeric);
INSERT INTO routes VALUES(11,'2025-01-01 11:07:00+00:00','2025-01-01 11:07:00+00:00',NULL,2,'10.1.0.0/16',1,1,1);
INSERT INTO routes VALUES(12,'2025-01-01 11:07:00+00:00','2025-01-01 11:07:00+00:00',NULL,1,'10.2.0.0/16',1,1,1);
CREATE TABLE `policies` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`data` text);
