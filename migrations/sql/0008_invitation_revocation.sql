-- Invitations can be revoked by the inviting enterprise (issue 3): a revoked
-- invitation can no longer be accepted and is no longer listed as pending;
-- the row stays, for the record of who was invited.
ALTER TABLE invitations ADD COLUMN revoked_at timestamptz;
