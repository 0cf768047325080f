package replay

// SetPageSize changes the page size for a test and returns a function
// that restores it.
func SetPageSize(n int) (restore func()) {
	old := pageSize
	pageSize = n
	return func() { pageSize = old }
}

// SetPageBytes changes the content a page holds for a test and returns a
// function that restores it.
func SetPageBytes(n int) (restore func()) {
	old := pageBytes
	pageBytes = n
	return func() { pageBytes = old }
}
