// Package account is the registry of sending accounts: which mailbox
// consented, in which tenant, through which app registration, and the
// per-mailbox limits and From policy the relay applies to it.
//
// # Design
//
// Accounts live in the JetStream key-value bucket relay_accounts, one key
// per alias. The bucket is the single source of truth shared by every relay
// process (workers, token services, authtool); nothing is cached here, so a
// change written by authtool is seen by the next Get anywhere in the
// cluster. The alias is used unchanged as the KV key and as the last token
// of the subject mail.send.<alias>, so it is restricted to
// ^[a-z0-9][a-z0-9_-]{0,62}$: safe as a key, as a subject token, in a
// metric label and in a file name.
//
// An Account holds configuration only, never secrets: refresh tokens,
// access tokens and client secrets are sealed in the token store
// (internal/token, bucket relay_tokens). A registry record may therefore be
// printed, logged and listed freely.
//
// # Failure semantics
//
// Put normalises (fills defaults) and validates before writing, so an
// invalid account never reaches the bucket; Validate's messages name the
// field (by its JSON name) and say what to change. Get and Delete report a
// missing alias as an error wrapping ErrNotFound. List on an empty bucket is
// an empty slice, not an error. A record that does not decode makes List
// fail with the alias named, rather than silently hiding an account. Every
// other error is a NATS/JetStream error, wrapped with the operation and
// alias, and should be treated as temporary by callers.
package account
