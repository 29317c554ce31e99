-- Mercato: one PostgreSQL database per service, all owned by the role the postgres image
-- creates from POSTGRES_USER (docker-compose.yml: `mercato`). Run once by the postgres image's
-- entrypoint (/docker-entrypoint-initdb.d) when the data volume is empty; each service's
-- tables are created afterwards by `mercato migrate --service <service>`.
CREATE DATABASE mercato_identity;
CREATE DATABASE mercato_catalog;
CREATE DATABASE mercato_inventory;
CREATE DATABASE mercato_cart;
CREATE DATABASE mercato_orders;
CREATE DATABASE mercato_payments;
CREATE DATABASE mercato_notifications;
CREATE DATABASE mercato_delivery;
