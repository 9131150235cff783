"""Town05 benchmark route files: fetch (pinned, checksum-verified), parse/validate, shard."""
