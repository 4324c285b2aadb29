// Package token keeps the OAuth2 tokens of every sending account sealed in
// JetStream KV and hands out valid access tokens, refreshing them through
// the Microsoft identity platform before they expire.
//
// # Sealing
//
// A Keyring holds AES-256-GCM keys read from RELAY_TOKEN_KEY_FILE: one
// "<key-id>:<base64>" per line, the first line seals, later lines only
// open (key rotation: put the new key first, keep the old one below, and
// records move to the new key on their next write; Store.Reseal does it at
// once). Sealed data is
//
//	version(1) | len(keyID) | keyID | nonce(12) | ciphertext+tag
//
// with the header and the caller's additional data authenticated. The
// store's additional data is "relay_tokens/<account>", so a value copied
// under another account's key, a flipped bit or a wrong key all fail with
// ErrOpen instead of yielding another account's tokens. Each record
// carries a generation, counted up at every write (Record.Generation); a
// Store refuses an older generation written back at a newer revision, a
// replay, with ErrReplayed (which wraps ErrOpen), for as long as it
// remembers the newer one (the process's life). A key id that is
// not in the key file is named in the error (ErrUnknownKey). Open never
// panics on any input (fuzzed by FuzzOpen). The key file must be mode
// 0600; key bytes never appear in errors or logs.
//
// # Store
//
// Store keeps one sealed Record per account in bucket relay_tokens
// (history 1, file storage). Whole records are sealed, so the bucket holds
// no plaintext at all: not the tokens, not the client secret, not even
// the state. Every write replaces the record's one revision, so no earlier
// refresh token, and after a key rotation nothing sealed under the
// retired key, lingers in the bucket. Update is a compare-and-set on the
// KV revision and reports a lost race as ErrConflict; Put is
// unconditional and is the consent step's write. Delete purges the key,
// leaving only a marker.
//
// # Refresh protocol
//
// Source.Token reads the record; a token valid beyond Margin is returned as
// it is. Otherwise one refresh runs per account and process (concurrent
// callers share it), and across processes the refresh token is protected
// by a lease written into the record with a compare-and-set: the refresher
// writes LeaseOwner/LeaseUntil at revision r (losers re-read), calls the
// token endpoint, and writes the result — with the rotated refresh token —
// at the lease's revision. A process that finds a lease held elsewhere
// uses the old access token while it is still valid, or waits (a KV watch,
// not polling) for the holder's write or the lease's end, at most
// SourceConfig.LeaseWait (a third of the lease, at most 20s; a forced
// refresh waits for the lease's end), after which the caller of Token
// gets ErrRefreshInProgress, a temporary error: a holder that
// died keeps its lease until it ends, longer than a worker waits. A
// refresh token is therefore sent to the identity platform once, even
// with many token services.
//
// If the result write loses its compare-and-set anyway (our lease
// expired), the record is re-read: a fresh token stored by the other
// writer is used instead of ours; a newer refresh token (consent) is never
// overwritten. The same holds for a refresh that fails after its lease
// ran out: a strictly rotating platform answers invalid_grant to the
// refresh token another replica has just spent, so a failure whose write
// loses the compare-and-set re-reads the record, and a newer usable token
// there (or another replica's lease on the same refresh token) means the
// failure is not raised: not logged as a failure, counted, published or
// written, and the caller gets the stored token.
//
// The lease is taken by compare-and-set on the KV revision. LeaseUntil is
// the holder's clock plus the TTL, which a process whose clock runs ahead
// reads as ended early; so a lease also ends for a process no sooner than
// a TTL after it first read that lease, on its own clock
// (Source.LeaseEnd), and the holder keeps within the TTL on its own clock
// (its call is bounded by half of it). Clock skew cannot make two
// processes refresh at once; a clock behind only refreshes late
// (docs/design.md §9.4, TestLeaseSkewDoesNotEndALease).
//
// # Failure semantics
//
// Identity platform errors are classified once, by Classify, into an
// *IdentityError whose Class follows docs/office365.md §2, branching on error
// and error_codes only (never the description text):
//
//   - needs_consent (refresh token dead, MFA/conditional access, consent
//     missing) and config_error (secret, app, tenant) are written to the
//     record and returned; from then on Token and ForceRefresh return the
//     same error without calling the identity platform, until a consent
//     Put writes a new record.
//   - transient (temporarily_unavailable, 5xx, 429, network errors,
//     timeouts, anything unknown) increments FailCount and sets
//     NextAttempt (exponential backoff with jitter, at least Retry-After),
//     shared by all processes through the record. The state stays healthy
//     and Token keeps returning the current access token while it is still
//     valid; only once it has expired is the state transient and the
//     error returned. A token that expires before the next attempt is
//     due turns the state transient at its expiry (MarkLapsed, called
//     by tokensvc's refresher), without a call.
//
// LastError holds the error, AADSTS codes, class and remedy — never tokens,
// secrets or description text. Logs carry the same fields.
//
// # Crash window
//
// If the identity platform returned a new refresh token and the process
// died before the KV write, the store still holds the previous refresh
// token and an expired lease. Entra does not revoke a refresh token when it
// issues the next one, so after the lease ends (Source.LeaseEnd) another
// refresher uses the previous token and recovers. A strict server that revokes on rotation
// would answer invalid_grant and the account would go to needs_consent:
// a person has to run authtool login again. The same holds if the store
// refuses the write for longer than its timeout (10s; a refused write is
// tried again meanwhile, and given up with an error in the log).
//
// Source.Close abandons refreshes in flight, as a crash would: a request
// still waiting for the identity platform is cancelled and nothing is
// written, so the refresh token was never spent, the lease simply expires
// and another token service takes over (internal/token/tokensvc's
// refresher waits for the lease's end). A refresh whose answer has already
// arrived is still stored (with its own short deadline), so a graceful
// stop never loses a rotated refresh token; only a real crash has the
// window above.
//
// # Seam
//
// Source is in-process. The NATS micro service relay-tokens
// (internal/token/tokensvc) wraps it: token.get is Token, token.refresh is
// ForceRefreshSince; SourceConfig.OnRefresh feeds its metrics and events.
// Workers use tokensvc.Client through the same two methods.
package token
