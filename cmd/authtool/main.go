// Command authtool connects Office 365 mailboxes to Relay365: a person
// signs in once (browser with PKCE, or device code), a test mail proves the
// token works, and only then is the account stored. See internal/authcmd.
package main

import (
	"os"

	"relay365/internal/authcmd"
)

func main() { os.Exit(authcmd.Main(os.Args[1:])) }
