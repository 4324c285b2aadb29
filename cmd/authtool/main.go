// Command authtool connects mailboxes to Relay365: a person signs in once
// (browser with PKCE, or device code), a test mail proves the token works,
// and only then is the account stored. Today it prints its help; the
// commands arrive with the authtool issue, and `relay sandbox` already
// uses the same consent code (internal/consent).
package main

import (
	"fmt"
	"io"
	"os"
)

const help = `authtool: connect Office 365 mailboxes to Relay365 with OAuth2

Usage: authtool <command> [flags]

Commands (planned; the consent engine already runs inside relay sandbox):
  login       sign in a mailbox (browser with PKCE, or --flow device), send a test mail, store the account
  app         add an app-only account (client credentials), send a test mail, store it
  list        accounts, token state and expiry, last error (no secrets)
  test        send a test mail through a stored account
  remove      delete an account and its tokens
  rotate-key  re-seal every stored token under a new key
  import      bring a refresh token from another tool

Environment: RELAY_NATS_URL (default nats://127.0.0.1:4222), RELAY_TOKEN_KEY_FILE.
Exit codes: 0 ok, 1 failed, 2 bad usage.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, help)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	fmt.Fprintf(stderr, "authtool %s: not available yet in this version; see authtool help\n", args[0])
	return 2
}
