package migrations

// VersionsOf is versionsOf for the external tests.
var VersionsOf = versionsOf

// NoTransaction is noTransaction for the external tests.
var NoTransaction = noTransaction
