-- keystile schema, version 8: roles of users (issue 17; docs/admin.md). Space-separated;
-- "admin" lets a person sign in to the admin console and use its tokens on /admin/v1.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '';
