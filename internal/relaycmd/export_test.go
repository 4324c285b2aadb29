package relaycmd

// SetReplayCleanEvery sets how many bytes of replayed dead letters'
// bodies relay dlq replay keeps before it deletes them, until the test
// ends.
func SetReplayCleanEvery(cleanup func(func()), n int64) {
	old := replayCleanEvery
	replayCleanEvery = n
	cleanup(func() { replayCleanEvery = old })
}
