package authcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/consent"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

// listItem is one account in `authtool list`. It holds no secret: only
// registry fields and the token record's metadata.
type listItem struct {
	Account    string `json:"account"`
	Mailbox    string `json:"mailbox"`
	Tenant     string `json:"tenant"`
	ClientID   string `json:"client_id"`
	AppOnly    bool   `json:"app_only"`
	SMTP       string `json:"smtp"`
	FromPolicy string `json:"from_policy"`
	// MaxMessageBytes is the account's size limit, after encoding.
	MaxMessageBytes int64     `json:"max_message_bytes"`
	State           string    `json:"state"` // healthy, needs_consent, config_error, transient, missing, unreadable, unknown
	TokenExpiry     time.Time `json:"token_expiry,omitzero"`
	LastRefresh     time.Time `json:"last_refresh,omitzero"`
	LastError       string    `json:"last_error,omitempty"`
	KeyID           string    `json:"key_id,omitempty"`
	CreatedAt       time.Time `json:"created_at,omitzero"`
}

func runList(ctx context.Context, args []string, env Env) error {
	fs, c := newAdminFlags("list", env, false)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	sc, asJSON := c.store, c.json
	// Without a key the registry still lists; token states show unknown.
	var keys *token.Keyring
	if sc.KeyFile != "" {
		k, err := sc.keyring()
		if err != nil {
			return err
		}
		keys = k
	}
	st, err := sc.open(ctx, keys)
	if err != nil {
		return err
	}
	defer st.close()
	accts, err := st.accounts.List(ctx)
	if err != nil {
		return err
	}
	items := make([]listItem, 0, len(accts))
	for _, a := range accts {
		items = append(items, describe(ctx, st, a))
	}
	for _, a := range accts {
		if account.ProxyHasCredentials(a.ProxyURL) {
			fmt.Fprintf(env.Stderr, "Account %s: its proxy_url in %s holds credentials in plain text (stored by an earlier version); connect it again (authtool login, app or import --account %s --proxy ...) to seal them with its tokens.\n",
				a.Alias, account.Bucket, a.Alias)
		}
	}
	if keys == nil {
		fmt.Fprintln(env.Stderr, "No key file (RELAY_TOKEN_KEY_FILE or --key-file): token states are unknown.")
	} else if orphans := orphanTokens(ctx, st, accts); len(orphans) > 0 {
		fmt.Fprintf(env.Stderr, "Token records without an account (left by an interrupted tool; remove with authtool remove --account NAME): %s\n", strings.Join(orphans, ", "))
	}
	if asJSON {
		return json.NewEncoder(env.Stdout).Encode(items)
	}
	if len(items) == 0 {
		fmt.Fprintln(env.Stdout, "no accounts (add one with authtool login)")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tMAILBOX\tTYPE\tMAX SIZE\tSTATE\tTOKEN EXPIRES\tLAST REFRESH\tKEY\tLAST ERROR")
	for _, it := range items {
		kind := "delegated"
		if it.AppOnly {
			kind = "app-only"
		}
		size := cli.ByteSize(it.MaxMessageBytes)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.Account, it.Mailbox, kind, size.String(), it.State,
			when(it.TokenExpiry), when(it.LastRefresh), orDash(it.KeyID), orDash(it.LastError))
	}
	return tw.Flush()
}

// describe is the account as the token service reports it (state, expiry,
// last error; never a secret), for listing.
func describe(ctx context.Context, st *stores, a account.Account) listItem {
	it := listItem{Account: a.Alias, Mailbox: a.Mailbox, Tenant: a.Tenant, ClientID: a.ClientID, AppOnly: a.AppOnly,
		SMTP: a.SMTPAddr, FromPolicy: string(a.FromPolicy), MaxMessageBytes: a.SizeLimit(), State: "unknown", CreatedAt: a.CreatedAt}
	if st.tokens == nil {
		return it
	}
	ts, err := tokensvc.Describe(ctx, st.tokens, a, time.Now())
	if err != nil {
		it.State, it.LastError = tokensvc.StatusUnreadable, err.Error()
		return it
	}
	it.State, it.TokenExpiry, it.LastRefresh, it.LastError, it.KeyID = ts.State, ts.Expiry, ts.LastRefresh, ts.LastError, ts.KeyID
	return it
}

func orphanTokens(ctx context.Context, st *stores, accts []account.Account) []string {
	aliases, err := st.tokens.Aliases(ctx)
	if err != nil {
		return nil
	}
	return slices.DeleteFunc(aliases, func(alias string) bool {
		return slices.ContainsFunc(accts, func(a account.Account) bool { return a.Alias == alias })
	})
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runTest(ctx context.Context, args []string, env Env) error {
	fs, c := newAdminFlags("test", env, true)
	var to string
	var timeout time.Duration
	fs.StringVar(&to, "to", "", "recipient of the test mail (default: the account's mailbox)")
	fs.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := cli.CheckTimeout(timeout); err != nil {
		return err
	}
	sc, alias, asJSON := c.store, c.alias, c.json
	keys, err := sc.keyring()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := sc.open(ctx, keys)
	if err != nil {
		return err
	}
	defer st.close()
	a, err := st.accounts.Get(ctx, alias)
	if err != nil {
		return err
	}
	// The relay's own token path: the stored token, refreshed if it is
	// about to expire (and the refresh recorded, as the relay would).
	src := token.NewSource(token.SourceConfig{Store: st.tokens, Accounts: st.accounts, Log: zerolog.Nop()})
	at, err := src.Token(ctx, alias)
	if err != nil {
		return fmt.Errorf("no access token for account %s: %w", alias, err)
	}
	// As a worker does: a token goes only where its binding says.
	if err := at.Binding.Check(a); err != nil {
		return err
	}
	if to == "" {
		to = a.Mailbox
	}
	fmt.Fprintf(env.Stderr, "Sending a test mail as %s to %s through %s...\n", a.Mailbox, to, a.SMTPAddr)
	if err := (consent.Enroller{Pacing: st.pacer}).SendTest(ctx, a, at.Token, to); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(env.Stdout).Encode(map[string]any{"account": alias, "mailbox": a.Mailbox, "to": to, "accepted": true})
	}
	fmt.Fprintf(env.Stdout, "test mail accepted: account %s sent as %s to %s\n", alias, a.Mailbox, to)
	return nil
}

func runRemove(ctx context.Context, args []string, env Env) error {
	fs, c := newAdminFlags("remove", env, true)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	sc, alias, asJSON := c.store, c.alias, c.json
	// Deleting sealed tokens needs no key: the store is opened with a
	// throw-away ring only to reach the bucket.
	keys, err := token.NewKeyring(token.NamedKey{ID: "remove", Key: make([]byte, token.KeySize)})
	if err != nil {
		return err
	}
	st, err := sc.open(ctx, keys)
	if err != nil {
		return err
	}
	defer st.close()
	// The account goes first: from then on no worker uses the tokens.
	err = st.accounts.Delete(ctx, alias)
	hadAccount := err == nil
	if err != nil && !errors.Is(err, account.ErrNotFound) {
		return err
	}
	_, rerr := st.tokens.RawGet(ctx, alias)
	hadTokens := rerr == nil
	if err := st.tokens.Delete(ctx, alias); err != nil {
		return err
	}
	if !hadAccount && !hadTokens {
		return fmt.Errorf("no account %s and no tokens for it (see authtool list)", alias)
	}
	if asJSON {
		return json.NewEncoder(env.Stdout).Encode(map[string]any{"account": alias, "account_removed": hadAccount, "tokens_removed": hadTokens})
	}
	fmt.Fprintf(env.Stdout, "removed: account %s (registry entry: %t, sealed tokens and their history: %t)\n", alias, hadAccount, hadTokens)
	fmt.Fprintf(env.Stderr, "Messages still queued for %s will be dead-lettered as for an unknown account.\n", alias)
	return nil
}

func runRotateKey(ctx context.Context, args []string, env Env) error {
	fs, c := newAdminFlags("rotate-key", env, false)
	var newKeyFile string
	fs.StringVar(&newKeyFile, "new-key-file", "", "key file holding the new key (create it with relay keygen --out FILE); required")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	sc, asJSON := c.store, c.json
	if newKeyFile == "" {
		return cli.Usagef("--new-key-file is required: create a new key with relay keygen --out FILE")
	}
	old, err := sc.keyring()
	if err != nil {
		return err
	}
	next, err := token.LoadKeyring(newKeyFile)
	if err != nil {
		return cli.UsageError{Err: fmt.Errorf("--new-key-file: %w", err)}
	}
	ring, err := next.Then(old)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	st, err := sc.open(ctx, ring)
	if err != nil {
		return err
	}
	defer st.close()
	aliases, err := st.tokens.Aliases(ctx)
	if err != nil {
		return err
	}
	var resealed, current []string
	var failed []error
	for _, alias := range aliases {
		wrote, err := st.tokens.Reseal(ctx, alias)
		switch {
		case errors.Is(err, token.ErrNotFound):
			// removed meanwhile
		case err != nil:
			failed = append(failed, err)
		case wrote:
			resealed = append(resealed, alias)
		default:
			current = append(current, alias)
		}
	}
	steps := rotationSteps(sc.KeyFile, newKeyFile, ring.CurrentID())
	if asJSON {
		errs := make([]string, len(failed))
		for i, e := range failed {
			errs[i] = e.Error()
		}
		if err := json.NewEncoder(env.Stdout).Encode(map[string]any{
			"new_key_id": ring.CurrentID(), "resealed": nonNil(resealed), "already_current": nonNil(current),
			"failed": errs, "next_steps": steps,
		}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(env.Stdout, "re-sealed %d token record(s) under key %s (%d already under it, %d failed)\n\n",
			len(resealed), ring.CurrentID(), len(current), len(failed))
		for _, s := range steps {
			fmt.Fprintln(env.Stdout, s)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d token record(s) could not be re-sealed: %w", len(failed), errors.Join(failed...))
	}
	return nil
}

// rotationSteps explains what the operator does after re-sealing. The
// running relays still seal with the old key and cannot open records sealed
// with the new one until their key file lists it.
func rotationSteps(keyFile, newKeyFile, newKeyID string) []string {
	return []string{
		"Next: the relay must know the new key. Make " + keyFile + " list the new key first (it seals) and the old key after it (it still opens records the running relays seal before they restart):",
		"  cat " + newKeyFile + " " + keyFile + " > " + keyFile + ".next && chmod 600 " + keyFile + ".next && mv " + keyFile + ".next " + keyFile,
		"then restart every relay serve and use the same file for authtool. Until they restart they cannot open the re-sealed tokens: mail for those accounts waits in the queue, nothing is lost.",
		// The order matters: a relay that still seals with the old key
		// (its first line) puts every token it refreshes back under the
		// old key, undoing a re-seal made before it restarted.
		"To avoid that pause: first append the new key to the key file as its last line and restart the relays, then make it the first line (the old key after it) and restart them again, then run rotate-key.",
		"Until the relays seal with the new key they put each token they refresh back under the old one: keep the old key line until authtool list shows key " + newKeyID + " for every account (run rotate-key again if not); delete " + newKeyFile + " once it is merged, and back the key file up.",
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
