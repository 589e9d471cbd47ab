-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as POSTGRES_USER (oms):
-- one database per service, no shared tables. Their tables come from each service's migrations (the compose
-- `setup` one-shot). Same databases as deploy/postgres/postgres.sh creates for `make run`.
CREATE DATABASE oms_order;
CREATE DATABASE oms_routing;
CREATE DATABASE oms_inventory;
CREATE DATABASE oms_notifications;
