-- A Headscale 0.23.0 database, written for the tests (not by Headscale):
-- gorm's DDL of that release, pre-auth key tags in pre_auth_key_acl_tags,
-- approved routes in the routes table, a policy v1 naming users bare.
-- Rows: users 1 alice, 2 bob, 3 ghost (soft-deleted); nodes 1 alice-laptop,
-- 2 bob-ci (tagged, ephemeral key), 3 router (routes; requests tag:router,
-- which alice owns), 4 gone (soft-deleted), 5 a second alice-laptop (name
-- taken), 6 copycat (IPv4 of node 1), 7 haunted (owner soft-deleted).
CREATE TABLE `migrations` (`id` text,PRIMARY KEY (`id`));
INSERT INTO migrations VALUES('202312101416');
INSERT INTO migrations VALUES('202312101430');
INSERT INTO migrations VALUES('202402151347');
INSERT INTO migrations VALUES('2024041121742');
INSERT INTO migrations VALUES('202406021630');
CREATE TABLE `users` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`name` text UNIQUE);
INSERT INTO users VALUES(1,'2024-05-01T10:00:00Z','2024-05-01T10:00:00Z',NULL,'alice');
INSERT INTO users VALUES(2,'2024-05-01 10:00:01.5+00:00','2024-05-01 10:00:01.5+00:00',NULL,'bob');
INSERT INTO users VALUES(3,'2024-05-01 10:00:02+00:00','2024-05-01 10:00:02+00:00','2024-06-01 10:00:00+00:00','ghost');
CREATE TABLE `pre_auth_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`key` text,`user_id` integer,`reusable` numeric,`ephemeral` numeric DEFAULT false,`used` numeric DEFAULT false,`created_at` datetime,`expiration` datetime,CONSTRAINT `fk_pre_auth_keys_user` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON DELETE CASCADE);
INSERT INTO pre_auth_keys VALUES(1,'0123456789abcdef0123456789abcdef0123456789abcdef',1,1,0,0,'2024-05-01 11:00:00+00:00','2099-01-01 00:00:00+00:00');
INSERT INTO pre_auth_keys VALUES(2,'fedcba9876543210fedcba9876543210fedcba9876543210',2,'true','true','false','2024-05-01 11:00:00+00:00',NULL);
CREATE TABLE `pre_auth_key_acl_tags` (`id` integer PRIMARY KEY AUTOINCREMENT,`pre_auth_key_id` integer,`tag` text,CONSTRAINT `fk_pre_auth_keys_acl_tags` FOREIGN KEY (`pre_auth_key_id`) REFERENCES `pre_auth_keys`(`id`) ON DELETE CASCADE);
INSERT INTO pre_auth_key_acl_tags VALUES(1,2,'tag:ci');
CREATE TABLE `api_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`prefix` text UNIQUE,`hash` blob,`created_at` datetime,`expiration` datetime,`last_seen` datetime);
INSERT INTO api_keys VALUES(1,'aBcDeF1',X'2432612430342431773238383778564a5430656e4861634f4353466c4f326378486e4b576872503070552f684e30415537666a774c4569626b563561','2024-05-01 12:00:00+00:00','2099-01-01 00:00:00+00:00','2024-05-02 12:00:00+00:00');
CREATE TABLE `nodes` (`id` integer PRIMARY KEY AUTOINCREMENT,`machine_key` text,`node_key` text,`disco_key` text,`endpoints` text,`host_info` text,`ipv4` text,`ipv6` text,`hostname` text,`given_name` varchar(63),`user_id` integer,`register_method` text,`forced_tags` text,`auth_key_id` integer,`last_seen` datetime,`expiry` datetime,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,CONSTRAINT `fk_nodes_user` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON DELETE CASCADE,CONSTRAINT `fk_nodes_auth_key` FOREIGN KEY (`auth_key_id`) REFERENCES `pre_auth_keys`(`id`));
INSERT INTO nodes VALUES(1,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','discokey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','["192.0.2.1:41641"]','{"Hostname":"alice-laptop","OS":"linux"}','100.64.0.1','fd7a:115c:a1e0::1','alice-laptop','alice-laptop',1,'authkey','[]',1,'2024-06-01 09:00:00+00:00','0001-01-01 00:00:00+00:00','2024-05-01 11:05:00+00:00','2024-06-01 09:00:00+00:00',NULL);
INSERT INTO nodes VALUES(2,'mkey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','nodekey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','','null','','100.64.0.2','fd7a:115c:a1e0::2','bob-ci','bob-ci',2,'authkey','["tag:ci"]',2,NULL,NULL,'2024-05-01 11:06:00+00:00','2024-05-01 11:06:00+00:00',NULL);
INSERT INTO nodes VALUES(3,'mkey:7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193','nodekey:7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193','discokey:0000000000000000000000000000000000000000000000000000000000000000',NULL,'{"Hostname":"router","RequestTags":["tag:router","tag:nope"],"RoutableIPs":["10.0.0.0/24","192.168.0.0/24","0.0.0.0/0","::/0"]}','100.64.0.3','fd7a:115c:a1e0::3','router','router',1,'cli',NULL,NULL,'2024-06-01 09:00:00.123456789+00:00','2025-01-01 00:00:00+00:00','2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00',NULL);
INSERT INTO nodes VALUES(4,'mkey:4814d92093ac8a0f4a2163ab87dee509ba306a58f5888be0edcb2fcd0712028b','nodekey:4814d92093ac8a0f4a2163ab87dee509ba306a58f5888be0edcb2fcd0712028b','','[]','','100.64.0.4','fd7a:115c:a1e0::4','gone','gone',1,'authkey','[]',1,NULL,NULL,'2024-05-01 11:08:00+00:00','2024-05-01 11:08:00+00:00','2024-05-02 00:00:00+00:00');
INSERT INTO nodes VALUES(5,'mkey:82f3e9c695dc6b8d1b11818d5701919e286de8d47f7c3eb3100c485f79e57828','nodekey:82f3e9c695dc6b8d1b11818d5701919e286de8d47f7c3eb3100c485f79e57828','','[]','','100.64.0.5','fd7a:115c:a1e0::5','alice-laptop','alice-laptop',1,'authkey','[]',1,NULL,NULL,'2024-05-01 11:09:00+00:00','2024-05-01 11:09:00+00:00',NULL);
INSERT INTO nodes VALUES(6,'mkey:8b53639f152c8fc6ef30802fde462ba0be9cf085f7580dc69efd72e002abbb35','nodekey:8b53639f152c8fc6ef30802fde462ba0be9cf085f7580dc69efd72e002abbb35','','[]','','100.64.0.1',NULL,'copycat','copycat',2,'authkey','[]',NULL,NULL,NULL,'2024-05-01 11:10:00+00:00','2024-05-01 11:10:00+00:00',NULL);
INSERT INTO nodes VALUES(7,'mkey:711430f6164e93803d93428bc1fab80f41e213bb197689307de8606d437c3038','nodekey:711430f6164e93803d93428bc1fab80f41e213bb197689307de8606d437c3038','','[]','','100.64.0.7','fd7a:115c:a1e0::7','haunted','haunted',3,'cli','[]',NULL,NULL,NULL,'2024-05-01 11:11:00+00:00','2024-05-01 11:11:00+00:00',NULL);
CREATE TABLE `routes` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`node_id` integer,`prefix` text,`advertised` numeric,`enabled` numeric,`is_primary` numeric,CONSTRAINT `fk_nodes_routes` FOREIGN KEY (`node_id`) REFERENCES `nodes`(`id`) ON DELETE CASCADE);
INSERT INTO routes VALUES(1,'2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00',NULL,3,'10.0.0.0/24',1,1,1);
INSERT INTO routes VALUES(2,'2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00',NULL,3,'192.168.0.0/24',1,0,0);
INSERT INTO routes VALUES(3,'2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00',NULL,3,'0.0.0.0/0',1,1,0);
INSERT INTO routes VALUES(4,'2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00',NULL,3,'::/0',1,1,0);
INSERT INTO routes VALUES(5,'2024-05-01 11:07:00+00:00','2024-05-01 11:07:00+00:00','2024-05-03 00:00:00+00:00',3,'172.16.0.0/16',1,1,0);
CREATE TABLE `policies` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,`deleted_at` datetime,`data` text);
INSERT INTO policies VALUES(1,'2024-05-01 12:00:00+00:00','2024-05-01 12:00:00+00:00',NULL,'{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}');
INSERT INTO policies VALUES(2,'2024-05-02 12:00:00+00:00','2024-05-02 12:00:00+00:00',NULL,'// policy v1: users named bare
{
  "groups": {"group:admins": ["alice"]},
  "tagOwners": {"tag:router": ["alice"], "tag:ci": ["bob"]},
  "acls": [
    {"action": "accept", "src": ["group:admins"], "dst": ["*:*"]},
    {"action": "accept", "src": ["bob"], "dst": ["alice:22", "tag:router:*"]},
  ],
}');
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('users',3);
INSERT INTO sqlite_sequence VALUES('pre_auth_keys',2);
INSERT INTO sqlite_sequence VALUES('api_keys',1);
INSERT INTO sqlite_sequence VALUES('nodes',9);
INSERT INTO sqlite_sequence VALUES('routes',5);
INSERT INTO sqlite_sequence VALUES('policies',2);
INSERT INTO sqlite_sequence VALUES('pre_auth_key_acl_tags',1);
