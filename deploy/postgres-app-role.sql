-- The broker's runtime role, for deployments that keep it apart from the role that owns the
-- schema and runs `broker migrate`: the application may add audit rows but never rewrite,
-- delete or truncate them, and never changes the schema version.
--
-- Create the role once (CREATE ROLE broker_app LOGIN PASSWORD '...'), then, as the schema
-- owner, after every `broker migrate`:
--
--   psql "$OWNER_DATABASE_URL" -v app_role=broker_app -f deploy/postgres-app-role.sql
--
-- and give `broker serve` and `broker worker` a BROKER_DATABASE_URL that logs in as
-- broker_app. `broker migrate` and `broker keys` keep the owner's URL.

GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_role";
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM :"app_role";
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM :"app_role";
