package migrations

// VersionsOf is versionsOf for the external tests.
var VersionsOf = versionsOf
